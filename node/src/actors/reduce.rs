//! The Reduce actor: merges the Aggregate actors' local top-N lists into the
//! exact global top-N and writes it to the aggregates topic. It aligns
//! barriers over its inputs like the Aggregate actors.

use super::output::Output;
use super::{ActorCtx, Control, Inbound};
use crate::convert::top_from_pb;
use crate::snapshot_codec::{reduce_from_pb, reduce_to_pb};
use adclick_core::align::{requeue, Aligned, BarrierAligner, BarrierStep};
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::output::OutputRecord;
use adclick_core::reduce::ReduceState;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{Barrier, Watermark};
use adclick_proto::snapshot::ReduceSnapshot;
use anyhow::{Context, Result};
use prost::Message as _;
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

/// Runs the Reduce actor until cancelled or its inputs close.
pub async fn run(
    ctx: ActorCtx,
    mut mailbox: crate::inputs::Inputs,
    mut control: mpsc::Receiver<Control>,
) -> Result<()> {
    let cfg = ctx.cfg.clone();
    let actor = ctx.id.to_string();
    let mut state = ReduceState::new(
        ctx.num_aggregates as usize,
        cfg.job.top_n as usize,
        cfg.job.allowed_lateness_ms as i64,
        actor.clone(),
    );
    let mut restored = None;
    if ctx.restore_epoch > 0 {
        // A missing snapshot the checkpoint lists fails the restore rather
        // than starting empty.
        let bytes = ctx
            .snapshots
            .snapshot_for_restore(ctx.restore_epoch, &actor)
            .await?
            .unwrap_or_default();
        let snap = ReduceSnapshot::decode(bytes.as_slice()).context("decoding reduce snapshot")?;
        crate::snapshot_codec::check_version(snap.version, "reduce snapshot")?;
        state.restore(reduce_from_pb(&snap));
        restored = Some((ctx.restore_epoch, snap.pending));
        let before = ctx
            .snapshots
            .listed_actors(ctx.restore_epoch)
            .await?
            .iter()
            .filter(|n| ActorId::parse(n).is_some_and(|a| a.kind == ActorKind::Aggregate))
            .count();
        if before != ctx.num_aggregates as usize {
            tracing::info!(
                actor = %actor,
                before,
                now = ctx.num_aggregates,
                "rescaled: rebuilding the top-N lists from the Aggregates"
            );
            state.begin_rebuild();
        }
    }
    let mut output = Output::open(&cfg, &actor, restored).await?;
    let mut aligner: BarrierAligner<Inbound> = BarrierAligner::new(ctx.num_aggregates as usize);
    let mut align_started: Option<Instant> = None;
    let mut barrier_trace = String::new();
    let mut work: VecDeque<Inbound> = VecDeque::new();
    ctx.report("running", None);
    tracing::info!(actor = %actor, restored = ctx.restore_epoch, "reduce started");
    loop {
        let msg = match work.pop_front() {
            Some(m) => m,
            None => {
                let blocked = aligner.blocked_inputs();
                tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                c = control.recv() => {
                    match c {
                        Some(Control::Complete(cmd)) => {
                            let span = ctx.commit_span(&cmd);
                            output.on_complete(cmd.epoch).instrument(span).await?
                        }
                        Some(Control::Barrier(_)) => {}
                        None => return Ok(()),
                    }
                    continue;
                }
                m = mailbox.recv(&blocked) => match m {
                    Some(m) => m,
                    None => return Ok(()),
                },
                }
            }
        };
        let input = msg.input;
        if let Body::Barrier(Barrier { epoch, traceparent }) = &msg.body {
            let (epoch, traceparent) = (*epoch, traceparent.clone());
            let mut note = |trace: String| {
                align_started.get_or_insert_with(Instant::now);
                if !trace.is_empty() {
                    barrier_trace = trace;
                }
            };
            match aligner.barrier(input as usize, epoch, msg) {
                BarrierStep::Waiting => note(traceparent),
                BarrierStep::Aligned(e) => {
                    note(traceparent);
                    let alignment_ms = align_started
                        .take()
                        .map_or(0, |t| t.elapsed().as_millis() as u64);
                    let span = ctx.snapshot_span(e, &std::mem::take(&mut barrier_trace));
                    let snap = reduce_to_pb(state.snapshot(), output.on_barrier(e)?.to_pb());
                    let bytes = snap.encode_to_vec();
                    let size = bytes.len();
                    async {
                        let saved = ctx.save_snapshot(e, bytes).await;
                        ctx.ack_if_saved(saved, e, size, alignment_ms).await
                    }
                    .instrument(span)
                    .await?;
                    requeue(&mut work, aligner.release());
                }
                BarrierStep::Superseded { abandoned, replay } => {
                    align_started = None;
                    super::superseded(&actor, abandoned, epoch);
                    requeue(&mut work, replay);
                }
                BarrierStep::Buffered | BarrierStep::Stale => {}
            }
            continue;
        }
        let msg = match aligner.offer(input as usize, msg) {
            Aligned::Process(m) => m,
            Aligned::Buffered => continue,
        };
        if let Body::Top(b) = &msg.body {
            ctx.telemetry.records_in(b.lists.len() as u64);
        }
        let records: Vec<OutputRecord> = match msg.body {
            Body::Top(batch) if batch.resend => {
                for l in batch.lists {
                    state.on_resend(input, top_from_pb(l));
                }
                continue;
            }
            Body::Top(batch) => {
                let ignored = state.lists_after_lateness();
                let out = batch
                    .lists
                    .into_iter()
                    .filter_map(|l| state.on_local(input, top_from_pb(l)))
                    .map(OutputRecord::TopN)
                    .collect();
                // Should stay 0: a revision Reduce could no longer merge.
                metrics::counter!("reduce_lists_after_lateness_total")
                    .increment(state.lists_after_lateness() - ignored);
                out
            }
            Body::Watermark(Watermark { timestamp_ms, idle }) => {
                let emitted = if idle {
                    state.on_idle(input)
                } else {
                    state.on_watermark(input, timestamp_ms)
                };
                ctx.report("running", state.watermark());
                emitted.into_iter().map(OutputRecord::TopN).collect()
            }
            _ => continue,
        };
        output.emit(records).await?;
    }
}
