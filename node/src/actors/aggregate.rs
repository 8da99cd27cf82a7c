//! The Aggregate actor: owns key groups, deduplicates, keeps per-minute
//! counts per (ad, slice), emits counts when the watermark closes a window,
//! re-emits late updates, side-outputs too-late events and sends its local
//! top-N lists to Reduce. At a barrier it aligns its inputs, snapshots its
//! state per key group together with its uncommitted output, and forwards
//! the barrier.

use super::aggregate_snapshot::{self, restore, Restored, Written};
use super::output::Output;
use super::runner::{self, Actor, Encode};
use super::{ActorCtx, CheckpointCmd, Control};
use crate::convert::{batch_from_pb, batch_records, top_to_pb, ReceivedBatch};
use crate::edge::Edge;
use crate::kafka::side::{bounded, ORIGINAL_SIZE};
use adclick_core::aggregate::{AggregateOutput, AggregateSettings, AggregateState, SideEvent};
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::output::{OutputRecord, SideRecord, SideTopic};
use adclick_core::watermark::InputWatermarks;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{TopNBatch, Watermark};
use anyhow::{Context, Result};
use tokio::sync::mpsc;

struct Aggregate {
    ctx: ActorCtx,
    actor: String,
    state: AggregateState,
    inputs: InputWatermarks,
    /// The one downstream edge, to Reduce.
    reduce: [Edge; 1],
    output: Output,
}

/// Runs an Aggregate actor until cancelled or its inputs close.
pub async fn run(
    ctx: ActorCtx,
    mailbox: crate::inputs::Inputs,
    control: mpsc::Receiver<Control>,
) -> Result<()> {
    let inputs = ctx.num_maps as usize;
    let (agg, written) = Aggregate::start(ctx).await?;
    runner::run(agg, written, mailbox, inputs, control).await
}

impl Aggregate {
    /// Restores (or starts) the state, and returns what its restored
    /// snapshot lets the first checkpoint reference.
    async fn start(ctx: ActorCtx) -> Result<(Self, Written)> {
        let cfg = ctx.cfg.clone();
        let actor = ctx.id.to_string();
        let settings = AggregateSettings {
            window_ms: cfg.job.window_ms(),
            allowed_lateness_ms: cfg.job.allowed_lateness_ms as i64,
            top_n: cfg.job.top_n as usize,
            top_windows: cfg.job.top_windows.clone(),
            producer: actor.clone(),
            max_ads_per_window: cfg.job.max_ads_per_window,
        };
        let restored = if ctx.restore_epoch > 0 {
            restore(&ctx, settings).await?
        } else {
            Restored {
                state: AggregateState::new(settings),
                own: None,
                retired: Vec::new(),
                rescaled: false,
                written: Written::default(),
            }
        };
        let state = restored.state;
        let written = restored.written;
        let reduce = ctx.connect(&ActorId::new(ActorKind::Reduce, 0)).await?;
        let output = Output::open(&cfg, &actor, restored.own).await?;
        for (name, saved) in restored.retired {
            super::output::commit_retired(&cfg, &name, ctx.restore_epoch, saved)
                .await
                .with_context(|| format!("committing the saved output of retired {name}"))?;
        }
        if restored.rescaled {
            // Reduce drops its lists, split by the old key groups, and
            // rebuilds them from these (they precede any watermark).
            let lists = state.resend_lists();
            tracing::info!(actor = %actor, lists = lists.len(), "rescaled: resending local top-N lists");
            reduce
                .send(Body::Top(TopNBatch {
                    lists: lists.into_iter().map(top_to_pb).collect(),
                    resend: true,
                }))
                .await?;
        }
        ctx.report("running", state.watermark());
        tracing::info!(actor = %actor, restored = ctx.restore_epoch, "aggregate started");
        let mut agg = Self {
            inputs: InputWatermarks::new(ctx.num_maps as usize),
            ctx,
            actor,
            state,
            reduce: [reduce],
            output,
        };
        // Counts a rescale merged into windows already closed here, never
        // emitted by the actor that held them: out now, as revisions.
        let restored_output = agg.state.emit_restored();
        if !restored_output.counts.is_empty() {
            metrics::counter!("restored_unemitted_counts_total")
                .increment(restored_output.counts.len() as u64);
            tracing::warn!(
                actor = %agg.actor,
                counts = restored_output.counts.len(),
                "restore brought unemitted counts of closed windows: emitting them as revisions"
            );
        }
        agg.ship(restored_output).await?;
        Ok((agg, written))
    }

    /// Sends counts and side records through the output (so they commit
    /// with the checkpoint, once) and the local top-N lists to Reduce.
    async fn ship(&mut self, out: AggregateOutput) -> Result<()> {
        metrics::counter!("duplicate_events_total").increment(out.duplicates);
        metrics::counter!("late_events_total").increment(out.late.len() as u64);
        metrics::counter!("dlq_events_total").increment(out.overflow.len() as u64);
        metrics::counter!("window_overflow_events_total").increment(out.overflow_events);
        let t = &self.ctx.telemetry;
        t.duplicates(out.duplicates);
        t.late(out.late.len() as u64);
        t.dead_lettered(out.overflow.len() as u64);
        if !out.overflow.is_empty() {
            tracing::warn!(
                actor = %self.actor,
                events = out.overflow_events,
                "window ad limit reached: events of new ads sent to the DLQ"
            );
        }
        let side = out
            .late
            .into_iter()
            .map(|e| side_record(SideTopic::Late, e, &self.actor))
            .chain(
                out.overflow
                    .into_iter()
                    .map(|e| side_record(SideTopic::Dlq, e, &self.actor)),
            );
        let records: Vec<OutputRecord> = side
            .chain(out.counts.into_iter().map(OutputRecord::Count))
            .collect();
        self.output.emit(records).await?;
        if !out.top.is_empty() {
            self.reduce[0]
                .send(Body::Top(TopNBatch {
                    lists: out.top.into_iter().map(top_to_pb).collect(),
                    resend: false,
                }))
                .await?;
        }
        Ok(())
    }
}

impl Actor for Aggregate {
    type Written = Written;

    fn ctx(&self) -> &ActorCtx {
        &self.ctx
    }

    fn downstream(&self) -> &[Edge] {
        &self.reduce
    }

    async fn on_data(&mut self, input: usize, body: Body) -> Result<()> {
        let Body::Counts(batch) = body else {
            return Ok(());
        };
        self.ctx.telemetry.records_in(batch_records(&batch));
        // A batch that fails its checks fails the actor, which restarts
        // from the last checkpoint: nothing is half-counted.
        let out = match batch_from_pb(batch)
            .map_err(|e| anyhow::anyhow!("count batch from map-{input}: {e}"))?
        {
            ReceivedBatch::Records(parts) => self.state.apply(parts),
            ReceivedBatch::Packed(packed) => self.state.apply_packed(&packed),
        };
        self.ship(out).await
    }

    async fn on_watermark(&mut self, input: usize, watermark: Watermark) -> Result<()> {
        let Watermark { timestamp_ms, idle } = watermark;
        let before = self.inputs.current();
        let now = if idle {
            self.inputs.set_idle_at(input, adclick_runtime::now_ms())
        } else {
            self.inputs.update(input, timestamp_ms)
        };
        // Only a job that never saw data is idle towards Reduce; once there
        // is a watermark, it keeps advancing (at wall-clock speed when
        // every input is idle) and is sent below.
        if idle && self.inputs.all_idle() && now.is_none() {
            self.reduce[0]
                .send(Body::Watermark(Watermark {
                    timestamp_ms: 0,
                    idle: true,
                }))
                .await?;
        }
        match now {
            Some(wm) if before.is_none_or(|b| wm > b) => {
                let out = self.state.advance(wm);
                self.ship(out).await?;
                self.reduce[0]
                    .send(Body::Watermark(Watermark {
                        timestamp_ms: wm,
                        idle: false,
                    }))
                    .await?;
                self.ctx.report("running", Some(wm));
                metrics::gauge!("aggregate_cells", "actor" => self.actor.clone())
                    .set(self.state.cells() as f64);
            }
            _ => {}
        }
        Ok(())
    }

    /// Freezes the state (a memory copy of the windows that changed since
    /// the last durable snapshot) and the uncommitted output; they are
    /// encoded and written off this task.
    async fn on_barrier(
        &mut self,
        cmd: &CheckpointCmd,
        previous: Written,
    ) -> Result<Encode<Written>> {
        let started = std::time::Instant::now();
        let pending = self.output.on_barrier(cmd.epoch)?;
        let output_us = started.elapsed().as_micros() as u64;
        let frozen = self
            .state
            .freeze_changed(|start| previous.has_window(start));
        tracing::debug!(
            output_us,
            state_us = started.elapsed().as_micros() as u64 - output_us,
            actor = %self.actor,
            epoch = cmd.epoch,
            cells = frozen.cells(),
            windows_written = frozen.copied_windows(),
            windows_held = frozen.held().len(),
            "aggregate state frozen"
        );
        let (actor, key_groups, epoch) =
            (self.actor.clone(), self.ctx.cfg.job.key_groups, cmd.epoch);
        Ok(Box::new(move || {
            aggregate_snapshot::encode(&actor, key_groups, epoch, frozen, pending, previous)
        }))
    }

    async fn on_commit(&mut self, cmd: &CheckpointCmd) -> Result<()> {
        self.output.on_complete(cmd.epoch).await
    }
}
/// A side-topic record for an event the state machine did not count.
fn side_record(topic: SideTopic, e: SideEvent, producer: &str) -> OutputRecord {
    let (payload, original) = bounded(&e.raw);
    let mut headers = vec![("reason".to_owned(), e.reason)];
    if let Some(wm) = e.watermark {
        headers.push(("watermark".to_owned(), wm.to_string()));
    }
    if let Some(size) = original {
        headers.push((ORIGINAL_SIZE.to_owned(), size));
    }
    OutputRecord::Side(SideRecord {
        topic,
        payload: payload.to_vec(),
        headers,
        producer: producer.to_owned(),
        epoch: 0,
        seq: 0,
    })
}
