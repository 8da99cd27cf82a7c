//! The Map actor: reads its Kafka partitions (manual assignment), parses and
//! validates events, sends rejects to the dead-letter topic, pre-aggregates
//! each micro-batch and routes it by key group. It also owns the
//! per-partition watermarks, including idleness.

use super::ActorCtx;
use crate::convert::partial_to_pb;
use crate::edge::Edge;
use crate::kafka::side::SideOutput;
use adclick_core::config::StartFrom;
use adclick_core::event::parse_event;
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::map_batch::MapBatcher;
use adclick_core::slice::Slicer;
use adclick_core::watermark::SourceWatermarks;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{CountBatch, Watermark};
use adclick_runtime::now_ms;
use anyhow::{Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Runs a Map actor over `partitions` until cancelled.
pub async fn run(ctx: ActorCtx, partitions: Vec<i32>) -> Result<()> {
    let cfg = ctx.cfg.clone();
    let job = &cfg.job;
    let actor = ctx.id.to_string();
    let mut outputs: Vec<Edge> = Vec::new();
    for i in 0..ctx.num_aggregates {
        outputs.push(ctx.connect(&ActorId::new(ActorKind::Aggregate, i)).await?);
    }
    let consumer: StreamConsumer =
        adclick_runtime::kafka::consumer(&cfg.kafka.bootstrap, &format!("{}-map", cfg.cluster.job_name), false)?;
    let mut tpl = TopicPartitionList::new();
    let start = match job.start_from {
        StartFrom::Earliest => Offset::Beginning,
        StartFrom::Latest => Offset::End,
    };
    for p in &partitions {
        tpl.add_partition_offset(&cfg.kafka.input_topic, *p, start).context("building assignment")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    let dlq = SideOutput::new(adclick_runtime::kafka::producer(&cfg.kafka.bootstrap)?, cfg.kafka.dlq_topic.clone());
    let slicer = Arc::new(Slicer::new(&cfg.slices)?);
    let mut batcher = MapBatcher::new(slicer, job.window_ms(), ctx.key_group_owner.clone(), outputs.len(), job.dedup);
    let mut watermarks = SourceWatermarks::new(
        &partitions,
        job.max_out_of_orderness_ms as i64,
        job.idle_timeout_ms as i64,
        now_ms(),
    );
    let limits = job.limits();
    let batch_window = Duration::from_millis(job.batch_max_ms.max(1));
    let mut last_sent_wm: Option<i64> = None;
    let mut sent_idle = false;
    let events_in = metrics::counter!("events_in_total", "actor" => actor.clone());
    let dlq_count = metrics::counter!("dlq_events_total");
    ctx.report("running", None);
    tracing::info!(actor = %actor, ?partitions, "map started");
    loop {
        let deadline = Instant::now() + batch_window;
        while batcher.len() < job.batch_max_events {
            let msg = tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                r = tokio::time::timeout_at(deadline, consumer.recv()) => r,
            };
            let msg = match msg {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(actor = %actor, "kafka fetch error: {e}");
                    break;
                }
                Ok(Ok(m)) => m,
            };
            let now = now_ms();
            let payload = msg.payload().unwrap_or_default();
            events_in.increment(1);
            match parse_event(payload, &limits, now) {
                Ok(ev) => {
                    let behind = watermarks.last().is_some_and(|w| ev.ts_ms < w);
                    watermarks.observe(msg.partition(), Some(ev.ts_ms), now);
                    batcher.add(ev, payload, behind);
                }
                Err(reason) => {
                    watermarks.observe(msg.partition(), None, now);
                    dlq_count.increment(1);
                    let headers = [
                        ("reason", reason.to_string()),
                        ("source.topic", cfg.kafka.input_topic.clone()),
                        ("source.partition", msg.partition().to_string()),
                        ("source.offset", msg.offset().to_string()),
                    ];
                    dlq.send(msg.key(), payload, &headers).await?;
                }
            }
        }
        if !batcher.is_empty() {
            for (i, parts) in batcher.flush().into_iter().enumerate() {
                if parts.is_empty() {
                    continue;
                }
                let batch = CountBatch { counts: parts.into_iter().map(partial_to_pb).collect() };
                outputs[i].send(Body::Counts(batch)).await?;
            }
        }
        let now = now_ms();
        if let Some(wm) = watermarks.current(now) {
            if last_sent_wm.is_none_or(|l| wm > l) {
                for out in &outputs {
                    out.send(Body::Watermark(Watermark { timestamp_ms: wm, idle: false })).await?;
                }
                last_sent_wm = Some(wm);
                ctx.report("running", Some(wm));
            }
        } else if !sent_idle && watermarks.is_empty_and_idle(now) {
            // Nothing was ever read: let downstream ignore this source.
            for out in &outputs {
                out.send(Body::Watermark(Watermark { timestamp_ms: 0, idle: true })).await?;
            }
            sent_idle = true;
        }
        for r in watermarks.report(now) {
            let p = r.partition.to_string();
            metrics::gauge!("partition_idle", "partition" => p.clone()).set(if r.idle { 1.0 } else { 0.0 });
            if let Some(w) = r.watermark {
                metrics::gauge!("watermark_lag_ms", "partition" => p).set((now - w) as f64);
            }
        }
    }
}
