//! The Aggregate actor: owns key groups, deduplicates, keeps per-minute
//! counts per (ad, slice), emits counts when the watermark closes a window,
//! re-emits late updates, side-outputs too-late events and sends its local
//! top-N lists to Reduce. At a barrier it aligns its inputs, snapshots its
//! state per key group together with its uncommitted output, and forwards
//! the barrier.

use super::aggregate_snapshot::{self, restore, Restored, Written};
use super::output::Output;
use super::{superseded, ActorCtx, Control, Inbound};
use crate::convert::{batch_from_pb, batch_records, top_to_pb, ReceivedBatch};
use crate::edge::Edge;
use crate::kafka::side::{bounded, ORIGINAL_SIZE};
use adclick_core::aggregate::{AggregateOutput, AggregateSettings, AggregateState, SideEvent};
use adclick_core::align::{requeue, Aligned, BarrierAligner, BarrierStep};
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::output::{OutputRecord, SideRecord, SideTopic};
use adclick_core::watermark::InputWatermarks;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{Barrier, TopNBatch, Watermark};
use anyhow::{Context, Result};
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

struct Aggregate {
    ctx: ActorCtx,
    actor: String,
    state: AggregateState,
    inputs: InputWatermarks,
    reduce: Edge,
    output: Output,
    aligner: BarrierAligner<Inbound>,
    align_started: Option<Instant>,
    /// Trace of the checkpoint being aligned (the same on every input).
    barrier_trace: String,
    /// The snapshot being encoded and written off this task, if any; it
    /// yields the windows it references once durable.
    snapshot_write: Option<tokio::task::JoinHandle<Option<Written>>>,
    /// What the last durable snapshot references: the next one references
    /// the windows that did not change and the output it already wrote.
    written: Written,
}

/// Runs an Aggregate actor until cancelled or its inputs close.
pub async fn run(
    ctx: ActorCtx,
    mut mailbox: crate::inputs::Inputs,
    mut control: mpsc::Receiver<Control>,
) -> Result<()> {
    let mut agg = Aggregate::start(ctx).await?;
    let mut work: VecDeque<Inbound> = VecDeque::new();
    loop {
        if let Some(msg) = work.pop_front() {
            agg.handle(msg, &mut work).await?;
            continue;
        }
        let blocked = agg.aligner.blocked_inputs();
        tokio::select! {
            _ = agg.ctx.cancel.cancelled() => return Ok(()),
            c = control.recv() => match c {
                Some(Control::Complete(cmd)) => {
                    let span = agg.ctx.commit_span(&cmd);
                    agg.output.on_complete(cmd.epoch).instrument(span).await?
                }
                Some(Control::Barrier(_)) => {}
                None => return Ok(()),
            },
            m = mailbox.recv(&blocked) => match m {
                Some(msg) => agg.handle(msg, &mut work).await?,
                None => return Ok(()),
            },
        }
    }
}

impl Aggregate {
    async fn start(ctx: ActorCtx) -> Result<Self> {
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
        Ok(Self {
            inputs: InputWatermarks::new(ctx.num_maps as usize),
            aligner: BarrierAligner::new(ctx.num_maps as usize),
            ctx,
            actor,
            state,
            reduce,
            output,
            align_started: None,
            barrier_trace: String::new(),
            snapshot_write: None,
            written,
        })
    }

    async fn handle(&mut self, msg: Inbound, work: &mut VecDeque<Inbound>) -> Result<()> {
        let input = msg.input as usize;
        if let Body::Barrier(Barrier { epoch, traceparent }) = &msg.body {
            let (epoch, traceparent) = (*epoch, traceparent.clone());
            match self.aligner.barrier(input, epoch, msg) {
                BarrierStep::Waiting => self.note_barrier(traceparent),
                BarrierStep::Aligned(e) => {
                    self.note_barrier(traceparent);
                    self.checkpoint(e).await?;
                    requeue(work, self.aligner.release());
                }
                BarrierStep::Superseded { abandoned, replay } => {
                    self.align_started = None;
                    superseded(&self.actor, abandoned, epoch);
                    requeue(work, replay);
                }
                BarrierStep::Buffered | BarrierStep::Stale => {}
            }
            return Ok(());
        }
        let msg = match self.aligner.offer(input, msg) {
            Aligned::Process(m) => m,
            Aligned::Buffered => return Ok(()),
        };
        let out = match msg.body {
            Body::Counts(batch) => {
                self.ctx.telemetry.records_in(batch_records(&batch));
                // A batch that fails its checks fails the actor, which
                // restarts from the last checkpoint: nothing is half-counted.
                match batch_from_pb(batch)
                    .map_err(|e| anyhow::anyhow!("count batch from map-{input}: {e}"))?
                {
                    ReceivedBatch::Records(parts) => self.state.apply(parts),
                    ReceivedBatch::Packed(packed) => self.state.apply_packed(&packed),
                }
            }
            Body::Watermark(Watermark { timestamp_ms, idle }) => {
                let before = self.inputs.current();
                let now = if idle {
                    self.inputs.set_idle_at(input, adclick_runtime::now_ms())
                } else {
                    self.inputs.update(input, timestamp_ms)
                };
                // Only a job that never saw data is idle towards Reduce; once
                // there is a watermark, it keeps advancing (at wall-clock
                // speed when every input is idle) and is sent below.
                if idle && self.inputs.all_idle() && now.is_none() {
                    self.reduce
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
                        self.reduce
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
                return Ok(());
            }
            _ => return Ok(()),
        };
        self.ship(out).await
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
            self.reduce
                .send(Body::Top(TopNBatch {
                    lists: out.top.into_iter().map(top_to_pb).collect(),
                    resend: false,
                }))
                .await?;
        }
        Ok(())
    }

    /// A barrier was recorded: the alignment (and its trace) has begun.
    fn note_barrier(&mut self, traceparent: String) {
        self.align_started.get_or_insert_with(Instant::now);
        if !traceparent.is_empty() {
            self.barrier_trace = traceparent;
        }
    }

    /// Takes this actor's part of checkpoint `epoch` without stopping for
    /// the write: the state is frozen (a memory copy of the flat state), the
    /// barrier goes on to Reduce at once, and the copy is encoded and
    /// written on another task, which acks the checkpoint only once the
    /// snapshot is durable. At most one snapshot is in flight: the next
    /// barrier waits for the previous write, so copies cannot pile up.
    async fn checkpoint(&mut self, epoch: u64) -> Result<()> {
        let alignment_ms = self
            .align_started
            .take()
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        let traceparent = std::mem::take(&mut self.barrier_trace);
        let span = self.ctx.snapshot_span(epoch, &traceparent);
        if let Some(previous) = self.snapshot_write.take() {
            let waited = Instant::now();
            // A failed write leaves nothing to reference: write it all.
            self.written = match previous.await {
                Ok(Some(written)) => written,
                Ok(None) => Written::default(),
                Err(e) => {
                    tracing::error!(actor = %self.actor, "snapshot writer task failed: {e}");
                    Written::default()
                }
            };
            metrics::histogram!("checkpoint_previous_write_wait_ms")
                .record(waited.elapsed().as_secs_f64() * 1e3);
        }
        let paused = Instant::now();
        let pending = self.output.on_barrier(epoch)?;
        let written = std::mem::take(&mut self.written);
        let frozen = span.in_scope(|| self.state.freeze_changed(|start| written.has_window(start)));
        self.reduce
            .send(Body::Barrier(Barrier { epoch, traceparent }))
            .await?;
        let pause = paused.elapsed();
        metrics::histogram!("checkpoint_pause_ms").record(pause.as_secs_f64() * 1e3);
        tracing::info!(
            actor = %self.actor,
            epoch,
            pause_us = pause.as_micros() as u64,
            cells = frozen.cells(),
            windows_written = frozen.copied_windows(),
            windows_held = frozen.held().len(),
            "checkpoint state frozen; encoding and writing it off the actor"
        );
        let write = aggregate_snapshot::write(
            self.ctx.clone(),
            epoch,
            frozen,
            pending,
            written,
            alignment_ms,
        );
        self.snapshot_write = Some(tokio::spawn(write.instrument(span)));
        Ok(())
    }
}

impl Drop for Aggregate {
    /// A stopped actor's snapshot write is abandoned: its generation is
    /// over, so its ack would be refused, and a late write must not land
    /// beside the next generation's. (A graceful stop waits for its final
    /// checkpoint's acks before cancelling, so nothing it needs is lost.)
    fn drop(&mut self) {
        if let Some(write) = self.snapshot_write.take() {
            write.abort();
        }
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
