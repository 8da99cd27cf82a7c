//! The Aggregate actor: owns key groups, deduplicates, keeps per-minute
//! counts per (ad, slice), emits counts when the watermark closes a window,
//! re-emits late updates, side-outputs too-late events and sends its local
//! top-N lists to Reduce. At a barrier it aligns its inputs, snapshots its
//! state per key group together with its uncommitted output, and forwards
//! the barrier.

use super::output::Output;
use super::{superseded, ActorCtx, Control, Inbound};
use crate::convert::{partial_from_pb, top_to_pb};
use crate::edge::Edge;
use crate::kafka::side::{bounded, ORIGINAL_SIZE};
use crate::snapshot_codec::{
    aggregate_from_parts, aggregate_parts, aggregate_to_pb, pending_from_parts,
};
use adclick_core::aggregate::{AggregateOutput, AggregateSettings, AggregateState, SideEvent};
use adclick_core::align::{requeue, Aligned, BarrierAligner, BarrierStep};
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::keygroup::key_group_of;
use adclick_core::output::{OutputRecord, SideRecord, SideTopic};
use adclick_core::watermark::InputWatermarks;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{Barrier, TopNBatch, Watermark};
use anyhow::{Context, Result};
use prost::Message as _;
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
    /// The snapshot being encoded and written off this task, if any.
    snapshot_write: Option<tokio::task::JoinHandle<()>>,
}

/// Runs an Aggregate actor until cancelled or its inputs close.
pub async fn run(
    ctx: ActorCtx,
    mut mailbox: mpsc::Receiver<Inbound>,
    mut control: mpsc::Receiver<Control>,
) -> Result<()> {
    let mut agg = Aggregate::start(ctx).await?;
    let mut work: VecDeque<Inbound> = VecDeque::new();
    loop {
        if let Some(msg) = work.pop_front() {
            agg.handle(msg, &mut work).await?;
            continue;
        }
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
            m = mailbox.recv() => match m {
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
            }
        };
        let state = restored.state;
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
                self.ctx.telemetry.records_in(batch.counts.len() as u64);
                self.state
                    .apply(batch.counts.into_iter().map(partial_from_pb).collect())
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
            if let Err(e) = previous.await {
                tracing::error!(actor = %self.actor, "snapshot writer task failed: {e}");
            }
            metrics::histogram!("checkpoint_previous_write_wait_ms")
                .record(waited.elapsed().as_secs_f64() * 1e3);
        }
        let paused = Instant::now();
        let pending = self.output.on_barrier(epoch)?;
        let frozen = span.in_scope(|| self.state.freeze());
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
            "checkpoint state frozen; encoding and writing it off the actor"
        );
        let ctx = self.ctx.clone();
        let key_groups = self.ctx.cfg.job.key_groups;
        let write = async move {
            let encoded = tokio::task::spawn_blocking(move || {
                aggregate_to_pb(frozen.snapshot(), key_groups, pending.to_pb()).encode_to_vec()
            })
            .await;
            let bytes = match encoded {
                Ok(bytes) => bytes,
                Err(e) => {
                    metrics::counter!("snapshot_write_failures_total").increment(1);
                    tracing::error!(actor = %ctx.id, epoch, "encoding snapshot {epoch} failed, so the checkpoint fails: {e}");
                    return;
                }
            };
            let size = bytes.len();
            let saved = ctx.save_snapshot(epoch, bytes).await;
            if let Err(e) = ctx.ack_if_saved(saved, epoch, size, alignment_ms).await {
                tracing::warn!(actor = %ctx.id, epoch, "checkpoint ack failed: {e:#}");
            }
        };
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

/// What an Aggregate restores.
struct Restored {
    state: AggregateState,
    /// Its own saved output, to commit if the crash left it uncommitted.
    own: Option<(u64, Vec<adclick_proto::snapshot::PendingEpoch>)>,
    /// Saved output of Aggregates the rescale retired that this one
    /// commits for them (index mod the new count).
    retired: Vec<(String, Vec<adclick_proto::snapshot::PendingEpoch>)>,
    /// The checkpoint had a different number of Aggregates.
    rescaled: bool,
}

/// Loads every Aggregate snapshot of the restored epoch and keeps the key
/// groups this actor owns now; its own uncommitted output comes back too.
async fn restore(ctx: &ActorCtx, settings: AggregateSettings) -> Result<Restored> {
    let epoch = ctx.restore_epoch;
    let me = ctx.id.index;
    let owners = ctx.key_group_owner.clone();
    let mut parts = Vec::new();
    let mut own = Vec::new();
    let mut retired = Vec::new();
    // Every Aggregate the checkpoint's metadata lists must be there: a key
    // group restored from a missing snapshot would start empty.
    let listed = ctx.snapshots.listed_actors(epoch).await?;
    let listed: Vec<ActorId> = listed
        .iter()
        .filter_map(|n| ActorId::parse(n))
        .filter(|a| a.kind == ActorKind::Aggregate)
        .collect();
    let present = ctx.snapshots.actors(epoch).await?;
    for a in &listed {
        anyhow::ensure!(
            present.contains(&a.to_string()),
            "checkpoint {epoch} has no snapshot of {a}"
        );
    }
    let rescaled = listed.len() != ctx.num_aggregates as usize;
    for name in present {
        let Some(id) = ActorId::parse(&name) else {
            continue;
        };
        // Without a rescale the ring is the same, so this actor's own
        // snapshot holds exactly the key groups it owns.
        if id.kind != ActorKind::Aggregate || (!rescaled && id != ctx.id) {
            continue;
        }
        let bytes = ctx
            .snapshots
            .get(epoch, &name)
            .await?
            .with_context(|| format!("checkpoint {epoch}: snapshot of {name} disappeared"))?;
        let wants_output = id == ctx.id
            || (id.index >= ctx.num_aggregates && id.index % ctx.num_aggregates.max(1) == me);
        // Decoding hundreds of MB is CPU work: off the runtime, so the
        // node keeps heartbeating and answering the coordinator meanwhile.
        // Only owned key groups and needed output are decoded.
        let owners = owners.clone();
        let what = format!("snapshot {epoch}/{name}");
        let (part, pending) = tokio::task::spawn_blocking(move || {
            let parts = aggregate_parts(bytes.into(), &what)?;
            let part = aggregate_from_parts(
                &parts,
                |kg| owners.get(kg as usize).is_some_and(|o| *o == me),
                &what,
            )?;
            let pending = if wants_output {
                pending_from_parts(&parts, &what)?
            } else {
                Vec::new()
            };
            anyhow::Ok((part, pending))
        })
        .await
        .context("snapshot decoding task")??;
        if id == ctx.id {
            own = pending;
        } else if wants_output {
            retired.push((name.clone(), pending));
        }
        parts.push(part);
    }
    let kgs = ctx.cfg.job.key_groups;
    let state = tokio::task::spawn_blocking(move || {
        AggregateState::restore(settings, parts, |ad| {
            owners
                .get(key_group_of(ad, kgs).0 as usize)
                .is_some_and(|o| *o == me)
        })
    })
    .await
    .context("state restore task")?;
    tracing::info!(actor = %ctx.id, epoch, cells = state.cells(), rescaled, "restored aggregate state");
    Ok(Restored {
        state,
        own: Some((epoch, own)),
        retired,
        rescaled,
    })
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
