//! The Aggregate actor: owns key groups, deduplicates, keeps per-minute
//! counts per (ad, slice), emits counts when the watermark closes a window,
//! re-emits late updates, side-outputs too-late events and sends its local
//! top-N lists to Reduce.

use super::ActorCtx;
use crate::convert::{partial_from_pb, top_to_pb};
use crate::kafka::side::SideOutput;
use crate::kafka::sink::OutputSink;
use adclick_core::aggregate::{AggregateOutput, AggregateSettings, AggregateState};
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::output::OutputRecord;
use adclick_core::watermark::InputWatermarks;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{TopNBatch, Watermark};
use anyhow::Result;
use tokio::sync::mpsc;

/// Runs an Aggregate actor until cancelled or its inputs close.
pub async fn run(ctx: ActorCtx, mut mailbox: mpsc::Receiver<super::Inbound>) -> Result<()> {
    let cfg = ctx.cfg.clone();
    let actor = ctx.id.to_string();
    let reduce = ctx.connect(&ActorId::new(ActorKind::Reduce, 0)).await?;
    let producer = adclick_runtime::kafka::producer(&cfg.kafka.bootstrap)?;
    let sink = OutputSink::new(producer.clone(), cfg.kafka.output_topic.clone());
    let late = SideOutput::new(producer, cfg.kafka.late_topic.clone());
    let mut state = AggregateState::new(AggregateSettings {
        window_ms: cfg.job.window_ms(),
        allowed_lateness_ms: cfg.job.allowed_lateness_ms as i64,
        top_n: cfg.job.top_n as usize,
        top_windows: cfg.job.top_windows.clone(),
        producer: actor.clone(),
    });
    let mut inputs = InputWatermarks::new(ctx.num_maps as usize);
    let duplicates = metrics::counter!("duplicate_events_total");
    let late_count = metrics::counter!("late_events_total");
    ctx.report("running", None);
    tracing::info!(actor = %actor, "aggregate started");
    loop {
        let msg = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            m = mailbox.recv() => m,
        };
        let Some(msg) = msg else { return Ok(()) };
        let out = match msg.body {
            Body::Counts(batch) => state.apply(batch.counts.into_iter().map(partial_from_pb).collect()),
            Body::Watermark(Watermark { timestamp_ms, idle }) => {
                let Some(i) = ActorCtx::input_index(&msg.from) else { continue };
                let before = inputs.current();
                let now = if idle { inputs.set_idle(i as usize) } else { inputs.update(i as usize, timestamp_ms) };
                if idle && inputs.all_idle() {
                    reduce.send(Body::Watermark(Watermark { timestamp_ms: 0, idle: true })).await?;
                }
                match now {
                    Some(wm) if before.is_none_or(|b| wm > b) => {
                        let out = state.advance(wm);
                        ship(&out, &sink, &late, &reduce).await?;
                        reduce.send(Body::Watermark(Watermark { timestamp_ms: wm, idle: false })).await?;
                        ctx.report("running", Some(wm));
                        metrics::gauge!("aggregate_cells", "actor" => actor.clone()).set(state.cells() as f64);
                        continue;
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        duplicates.increment(out.duplicates);
        late_count.increment(out.late.len() as u64);
        ship(&out, &sink, &late, &reduce).await?;
    }
}

async fn ship(out: &AggregateOutput, sink: &OutputSink, late: &SideOutput, reduce: &crate::edge::Edge) -> Result<()> {
    for l in &out.late {
        late.send(None, &l.raw, &[("reason", l.reason.clone()), ("watermark", l.watermark.to_string())]).await?;
    }
    let records: Vec<OutputRecord> = out.counts.iter().cloned().map(OutputRecord::Count).collect();
    sink.write(&records).await?;
    if !out.top.is_empty() {
        reduce.send(Body::Top(TopNBatch { lists: out.top.iter().cloned().map(top_to_pb).collect() })).await?;
    }
    Ok(())
}
