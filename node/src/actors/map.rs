//! The Map actor: reads its Kafka partitions (manual assignment), parses and
//! validates events, sends rejects to the dead-letter topic, pre-aggregates
//! each micro-batch and routes it by key group. It owns the per-partition
//! watermarks (with idleness) and, at a barrier, the source offsets.

use super::runner::{self, Actor, Encode, Encoded, Source};
use super::{ActorCtx, CheckpointCmd, Control};
use crate::convert::batch_to_pb;
use crate::edge::Edge;
use crate::kafka::side::SideOutput;
use adclick_core::config::StartFrom;
use adclick_core::event::{future_reference, parse_event_borrowed};
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::map_batch::MapBatcher;
use adclick_core::slice::Slicer;
use adclick_core::watermark::SourceWatermarks;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::Watermark;
use adclick_proto::snapshot::{MapSnapshot, PartitionOffset};
use adclick_runtime::input_batches::InputConsumer;
use adclick_runtime::now_ms;
use anyhow::{Context, Result};
use prost::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often an idle Map repeats its idle declaration.
const IDLE_REPEAT: Duration = Duration::from_millis(200);

struct Map {
    ctx: ActorCtx,
    actor: String,
    /// One edge per Aggregate, by index.
    outputs: Vec<Edge>,
    input: InputConsumer,
    watermarks: SourceWatermarks,
    /// Next offset to read per partition: what a snapshot saves.
    offsets: BTreeMap<i32, i64>,
    /// Restored offsets: records below them were processed before the
    /// checkpoint and are skipped after the rewind.
    resume_at: BTreeMap<i32, i64>,
    batcher: MapBatcher,
    limits: adclick_core::event::Limits,
    batch_window: Duration,
    batch_max_events: usize,
    dlq: SideOutput,
    /// Rejected records read since the last tick, sent to the DLQ there
    /// (outside the cancellable read, so none is dropped half-sent).
    rejected: Vec<Rejected>,
    input_topic: String,
    last_sent_wm: Option<i64>,
    last_idle_sent: Option<Instant>,
    read_since_yield: u32,
    events_in: metrics::Counter,
    dlq_count: metrics::Counter,
}

/// A record that failed validation, bound for the dead-letter topic.
struct Rejected {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    reason: String,
    partition: i32,
    offset: i64,
}

/// Runs a Map actor over `partitions` until cancelled.
pub async fn run(
    ctx: ActorCtx,
    partitions: Vec<i32>,
    control: mpsc::Receiver<Control>,
) -> Result<()> {
    let map = Map::start(ctx, partitions).await?;
    runner::run_source(map, control).await
}

impl Map {
    async fn start(ctx: ActorCtx, partitions: Vec<i32>) -> Result<Self> {
        let cfg = ctx.cfg.clone();
        let job = &cfg.job;
        let actor = ctx.id.to_string();
        let mut outputs: Vec<Edge> = Vec::new();
        for i in 0..ctx.num_aggregates {
            outputs.push(ctx.connect(&ActorId::new(ActorKind::Aggregate, i)).await?);
        }
        let mut watermarks = SourceWatermarks::new(
            &partitions,
            job.max_out_of_orderness_ms as i64,
            job.idle_timeout_ms as i64,
            now_ms(),
        );
        // Next offset to read per partition: restored from the checkpoint,
        // so a recovered source neither skips nor repeats records.
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        if ctx.restore_epoch > 0 {
            let (restored, watermark) = restore_offsets(&ctx, &partitions).await?;
            offsets = restored;
            // The coordinator refuses a mismatched checkpoint before
            // deploying (`fail`); this applies `reset`, and guards against
            // a topic recreated in between.
            let check = (
                cfg.kafka.bootstrap.clone(),
                cfg.kafka.input_topic.clone(),
                offsets.clone(),
                job.on_offset_mismatch,
                job.source_rewind_records,
            );
            let reset = tokio::task::spawn_blocking(move || {
                adclick_runtime::kafka::check_stored_offsets(
                    &check.0, &check.1, &check.2, check.4, check.3, "map",
                )
            })
            .await??;
            for p in reset {
                offsets.remove(&p);
            }
            watermarks.restore(watermark);
            tracing::info!(actor = %actor, epoch = ctx.restore_epoch, ?offsets, "restored source offsets");
        }
        let consumer: StreamConsumer = adclick_runtime::kafka::source_consumer(
            &cfg.kafka,
            &format!("{}-map", cfg.cluster.job_name),
        )?;
        let mut tpl = TopicPartitionList::new();
        // `job.start_from` is for a job without a checkpoint. A restored
        // job reads a partition the checkpoint does not know (added to the
        // topic since) from its start, so none of its records is skipped.
        let start = match job.start_from {
            _ if ctx.restore_epoch > 0 => adclick_runtime::kafka::PARTITION_START,
            StartFrom::Earliest => adclick_runtime::kafka::PARTITION_START,
            StartFrom::Latest => Offset::End,
        };
        for p in &partitions {
            let at = offsets.get(p).map_or(start, |o| {
                Offset::Offset((*o - job.source_rewind_records).max(0))
            });
            tpl.add_partition_offset(&cfg.kafka.input_topic, *p, at)
                .context("building assignment")?;
        }
        consumer.assign(&tpl).context("assigning partitions")?;
        let dlq = SideOutput::new(
            adclick_runtime::kafka::shared_producer(&cfg.kafka.bootstrap)?,
            cfg.kafka.dlq_topic.clone(),
        );
        let slicer = Arc::new(Slicer::new(&cfg.slices)?);
        let batcher = MapBatcher::new(
            slicer,
            job.window_ms(),
            ctx.key_group_owner.clone(),
            outputs.len(),
            job.dedup,
        );
        ctx.report("running", None);
        tracing::info!(actor = %actor, ?partitions, "map started");
        Ok(Self {
            events_in: metrics::counter!("events_in_total", "actor" => actor.clone()),
            dlq_count: metrics::counter!("dlq_events_total"),
            resume_at: offsets.clone(),
            offsets,
            outputs,
            input: InputConsumer::new(consumer, READ_AHEAD)?,
            watermarks,
            batcher,
            limits: job.limits(),
            batch_window: Duration::from_millis(job.batch_max_ms.max(1)),
            batch_max_events: job.batch_max_events,
            dlq,
            rejected: Vec::new(),
            input_topic: cfg.kafka.input_topic.clone(),
            last_sent_wm: None,
            last_idle_sent: None,
            read_since_yield: 0,
            actor,
            ctx,
        })
    }

    /// Sends `body` to every Aggregate.
    async fn broadcast(&self, body: Body) -> Result<()> {
        for out in &self.outputs {
            out.send(body.clone()).await?;
        }
        Ok(())
    }

    /// Sends the watermark on when it moved, or the idle declaration.
    async fn send_watermark(&mut self, now: i64) -> Result<()> {
        if self.watermarks.all_idle(now) {
            // Every partition is quiet: tell the aggregates to leave this
            // source out of their minimum. Repeated, because when all their
            // inputs are idle these messages are what moves time forward.
            if self
                .last_idle_sent
                .is_none_or(|t: Instant| t.elapsed() >= IDLE_REPEAT)
            {
                let timestamp_ms = self.watermarks.current(now).unwrap_or(0);
                self.broadcast(Body::Watermark(Watermark {
                    timestamp_ms,
                    idle: true,
                }))
                .await?;
                self.last_idle_sent = Some(Instant::now());
                // Rejoin with the current watermark as soon as data returns.
                self.last_sent_wm = None;
            }
        } else if let Some(wm) = self.watermarks.current(now) {
            self.last_idle_sent = None;
            if self.last_sent_wm.is_none_or(|l| wm > l) {
                self.broadcast(Body::Watermark(Watermark {
                    timestamp_ms: wm,
                    idle: false,
                }))
                .await?;
                self.last_sent_wm = Some(wm);
                self.ctx.report("running", Some(wm));
            }
        }
        Ok(())
    }

    fn report_partitions(&self, now: i64) {
        let reports = self.watermarks.report(now);
        self.ctx.telemetry.partitions(reports.clone());
        for r in reports {
            let p = r.partition.to_string();
            metrics::gauge!("partition_idle", "partition" => p.clone()).set(if r.idle {
                1.0
            } else {
                0.0
            });
            if let Some(w) = r.watermark {
                metrics::gauge!("watermark_lag_ms", "partition" => p).set((now - w) as f64);
            }
        }
    }
}

impl Actor for Map {
    type Written = ();

    fn ctx(&self) -> &ActorCtx {
        &self.ctx
    }

    fn downstream(&self) -> &[Edge] {
        &self.outputs
    }

    /// Sends the batch's rejects to the DLQ and its counts to the
    /// Aggregates, then the watermark.
    async fn on_tick(&mut self) -> Result<()> {
        for r in std::mem::take(&mut self.rejected) {
            let headers = [
                ("reason", r.reason),
                ("source.topic", self.input_topic.clone()),
                ("source.partition", r.partition.to_string()),
                ("source.offset", r.offset.to_string()),
            ];
            self.dlq
                .send(r.key.as_deref(), &r.payload, &headers)
                .await?;
        }
        if !self.batcher.is_empty() {
            for (i, packed) in self.batcher.flush_packed().into_iter().enumerate() {
                if packed.is_empty() {
                    continue;
                }
                self.outputs[i]
                    .send(Body::Counts(batch_to_pb(packed)))
                    .await?;
            }
        }
        let now = now_ms();
        self.send_watermark(now).await?;
        self.report_partitions(now);
        Ok(())
    }

    /// Everything read before the barrier was sent by the tick before
    /// this: the offsets are exactly the position after it.
    async fn on_barrier(&mut self, cmd: &CheckpointCmd, _previous: ()) -> Result<Encode<()>> {
        if cmd.drain {
            // `stop --drain`: event time ends here, so the Aggregates close
            // every window (and Reduce every top-N) before the barrier, and
            // this checkpoint commits them all.
            tracing::info!(actor = %self.actor, epoch = cmd.epoch, "draining: watermark to the end of time");
            self.broadcast(Body::Watermark(Watermark {
                timestamp_ms: i64::MAX,
                idle: false,
            }))
            .await?;
        }
        let snap = MapSnapshot {
            version: crate::snapshot_codec::VERSION,
            offsets: self
                .offsets
                .iter()
                .map(|(p, o)| PartitionOffset {
                    partition: *p,
                    offset: *o,
                })
                .collect(),
            watermark: self.watermarks.last(),
        };
        Ok(Box::new(move || Ok(Encoded::whole(snap.encode_to_vec()))))
    }
}

impl Source for Map {
    fn batch_window(&self) -> Duration {
        self.batch_window
    }

    /// Waiting for data, a Map ticks as often as it repeats its idle
    /// declaration: a partition is noticed idle at most that much later.
    fn idle_window(&self) -> Duration {
        self.batch_window.max(IDLE_REPEAT)
    }

    fn batch_full(&self) -> bool {
        self.batcher.len() >= self.batch_max_events
    }

    /// Cancel safe: the only awaits are rdkafka's `recv` (which hands over
    /// a message only when it returns it) and a yield after the records
    /// were taken in. Once `recv` has a record, the ones already fetched
    /// behind it are taken too, without awaiting, up to the batch's room.
    async fn read_until(&mut self, deadline: Instant) -> Result<bool> {
        let msg = match tokio::time::timeout_at(deadline, self.input.consumer().recv()).await {
            Err(_) => return Ok(false),
            Ok(Err(e)) => {
                tracing::warn!(actor = %self.actor, "kafka fetch error: {e}");
                return Ok(false);
            }
            Ok(Ok(m)) => m,
        };
        let mut intake = Intake {
            resume_at: &self.resume_at,
            offsets: &mut self.offsets,
            watermarks: &mut self.watermarks,
            batcher: &mut self.batcher,
            limits: &self.limits,
            rejected: &mut self.rejected,
            taken: 0,
            dead_lettered: 0,
            now: now_ms(),
        };
        intake.take(Record {
            partition: msg.partition(),
            offset: msg.offset(),
            payload: msg.payload().unwrap_or_default(),
            key: msg.key(),
            timestamp_ms: msg.timestamp().to_millis(),
        });
        drop(msg);
        let room = self
            .batch_max_events
            .saturating_sub(intake.batcher.len())
            .min(READ_AHEAD);
        let mut read = 1;
        if room > 0 {
            let actor = &self.actor;
            read += self.input.take_ready(
                room,
                |r| {
                    intake.take(Record {
                        partition: r.partition(),
                        offset: r.offset(),
                        payload: r.payload(),
                        key: r.key(),
                        timestamp_ms: r.timestamp_ms(),
                    })
                },
                |e| tracing::warn!(actor = %actor, "kafka fetch error: {e}"),
            );
        }
        let (taken, dead_lettered) = (intake.taken, intake.dead_lettered);
        self.events_in.increment(taken);
        self.ctx.telemetry.records_in(taken);
        if dead_lettered > 0 {
            self.dlq_count.increment(dead_lettered);
            self.ctx.telemetry.dead_lettered(dead_lettered);
        }
        // rdkafka's recv() is often ready at once and does not count toward
        // tokio's budget: yield now and then so heartbeats and other actors
        // on this worker thread are not starved.
        self.read_since_yield += read as u32;
        if self.read_since_yield >= 1024 {
            self.read_since_yield = 0;
            tokio::task::yield_now().await;
        }
        Ok(true)
    }
}

/// Most records taken behind the one `recv` returned, per read.
const READ_AHEAD: usize = 256;

/// One input record, from `recv` or from a batch.
struct Record<'a> {
    partition: i32,
    offset: i64,
    payload: &'a [u8],
    key: Option<&'a [u8]>,
    timestamp_ms: Option<i64>,
}

/// The Map's state a read changes, borrowed for one read, so the records
/// of a batch are taken in while the consumer is borrowed too.
struct Intake<'a> {
    resume_at: &'a BTreeMap<i32, i64>,
    offsets: &'a mut BTreeMap<i32, i64>,
    watermarks: &'a mut SourceWatermarks,
    batcher: &'a mut MapBatcher,
    limits: &'a adclick_core::event::Limits,
    rejected: &'a mut Vec<Rejected>,
    /// Records taken in (not those skipped below a restored offset), and
    /// those of them dead-lettered.
    taken: u64,
    dead_lettered: u64,
    /// Wall clock for the whole read: records taken together arrived
    /// together.
    now: i64,
}

impl Intake<'_> {
    /// Parses one record into the batch or the dead letters, and moves its
    /// partition's offset past it. A record below the restored offset was
    /// processed before the checkpoint and is skipped.
    fn take(&mut self, r: Record<'_>) {
        if self
            .resume_at
            .get(&r.partition)
            .is_some_and(|o| r.offset < *o)
        {
            return;
        }
        self.taken += 1;
        self.offsets.insert(r.partition, r.offset + 1);
        let reference = future_reference(r.timestamp_ms, self.now);
        match parse_event_borrowed(r.payload, self.limits, reference) {
            Ok(ev) => {
                let behind = self.watermarks.last().is_some_and(|w| ev.ts_ms < w);
                self.watermarks
                    .observe(r.partition, Some(ev.ts_ms), self.now);
                self.batcher.add(ev, r.payload, behind);
            }
            Err(reason) => {
                self.watermarks.observe(r.partition, None, self.now);
                self.dead_lettered += 1;
                self.rejected.push(Rejected {
                    key: r.key.map(<[u8]>::to_vec),
                    payload: r.payload.to_vec(),
                    reason: reason.to_string(),
                    partition: r.partition,
                    offset: r.offset,
                });
            }
        }
    }
}

/// The saved offsets of `partitions`, from whichever Map of the restored
/// checkpoint read each of them (partitions move between Maps when
/// `job.map_parallelism` or the partition count changes), and the lowest
/// watermark among those Maps. Every Map the checkpoint lists must have its
/// snapshot: a missing one would make its partitions start over or skip. A
/// partition no Map read yet (added to the topic since) has no offset and is
/// read from its start.
async fn restore_offsets(
    ctx: &ActorCtx,
    partitions: &[i32],
) -> Result<(BTreeMap<i32, i64>, Option<i64>)> {
    let epoch = ctx.restore_epoch;
    let listed = ctx.snapshots.listed_actors(epoch).await?;
    let mut offsets = BTreeMap::new();
    let mut watermark: Option<i64> = None;
    for name in listed.iter().filter(|n| n.starts_with("map-")) {
        let bytes = ctx.snapshots.get(epoch, name).await?.with_context(|| {
            format!("checkpoint {epoch} has no snapshot of {name}, which it lists")
        })?;
        let snap = MapSnapshot::decode(bytes.as_slice())
            .with_context(|| format!("decoding snapshot {epoch}/{name}"))?;
        crate::snapshot_codec::check_version(snap.version, name)?;
        let mut mine = false;
        for o in snap
            .offsets
            .iter()
            .filter(|o| partitions.contains(&o.partition))
        {
            offsets.insert(o.partition, o.offset);
            mine = true;
        }
        if let (true, Some(w)) = (mine, snap.watermark) {
            watermark = Some(watermark.map_or(w, |x: i64| x.min(w)));
        }
    }
    Ok((offsets, watermark))
}
