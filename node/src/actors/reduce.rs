//! The Reduce actor: merges the Aggregate actors' local top-N lists into the
//! exact global top-N and writes it to the aggregates topic. The runner
//! aligns its barriers over the Aggregates, like theirs over the Maps.

use super::output::Output;
use super::runner::{self, Actor, Encode, Encoded};
use super::{ActorCtx, CheckpointCmd, Control};
use crate::convert::top_from_pb;
use crate::edge::Edge;
use crate::snapshot_codec::{reduce_from_pb, reduce_to_pb};
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::output::OutputRecord;
use adclick_core::reduce::ReduceState;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::Watermark;
use adclick_proto::snapshot::ReduceSnapshot;
use anyhow::{Context, Result};
use prost::Message as _;
use tokio::sync::mpsc;

struct Reduce {
    ctx: ActorCtx,
    state: ReduceState,
    output: Output,
}

/// Runs the Reduce actor until cancelled or its inputs close.
pub async fn run(
    ctx: ActorCtx,
    mailbox: crate::inputs::Inputs,
    control: mpsc::Receiver<Control>,
) -> Result<()> {
    let inputs = ctx.num_aggregates as usize;
    let reduce = Reduce::start(ctx).await?;
    runner::run(reduce, (), mailbox, inputs, control).await
}

impl Reduce {
    async fn start(ctx: ActorCtx) -> Result<Self> {
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
            // A missing snapshot the checkpoint lists fails the restore
            // rather than starting empty.
            let bytes = ctx
                .snapshots
                .snapshot_for_restore(ctx.restore_epoch, &actor)
                .await?
                .unwrap_or_default();
            let snap =
                ReduceSnapshot::decode(bytes.as_slice()).context("decoding reduce snapshot")?;
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
        let output = Output::open(&cfg, &actor, restored).await?;
        ctx.report("running", None);
        tracing::info!(actor = %actor, restored = ctx.restore_epoch, "reduce started");
        Ok(Self { ctx, state, output })
    }
}

impl Actor for Reduce {
    type Written = ();

    fn ctx(&self) -> &ActorCtx {
        &self.ctx
    }

    /// Reduce is the last actor: its output goes to Kafka.
    fn downstream(&self) -> &[Edge] {
        &[]
    }

    async fn on_data(&mut self, input: usize, body: Body) -> Result<()> {
        let Body::Top(batch) = body else {
            return Ok(());
        };
        self.ctx.telemetry.records_in(batch.lists.len() as u64);
        let input = input as u32;
        if batch.resend {
            for l in batch.lists {
                self.state.on_resend(input, top_from_pb(l));
            }
            return Ok(());
        }
        let ignored = self.state.lists_after_lateness();
        let records: Vec<OutputRecord> = batch
            .lists
            .into_iter()
            .filter_map(|l| self.state.on_local(input, top_from_pb(l)))
            .map(OutputRecord::TopN)
            .collect();
        // Should stay 0: a revision Reduce could no longer merge.
        metrics::counter!("reduce_lists_after_lateness_total")
            .increment(self.state.lists_after_lateness() - ignored);
        self.output.emit(records).await
    }

    async fn on_watermark(&mut self, input: usize, watermark: Watermark) -> Result<()> {
        let input = input as u32;
        let emitted = if watermark.idle {
            self.state.on_idle(input)
        } else {
            self.state.on_watermark(input, watermark.timestamp_ms)
        };
        self.ctx.report("running", self.state.watermark());
        let records = emitted.into_iter().map(OutputRecord::TopN).collect();
        self.output.emit(records).await
    }

    /// Copies the open windows' lists and the uncommitted output; they are
    /// encoded and written off this task.
    async fn on_barrier(&mut self, cmd: &CheckpointCmd, _previous: ()) -> Result<Encode<()>> {
        let windows = self.state.snapshot();
        let pending = self.output.on_barrier(cmd.epoch)?;
        Ok(Box::new(move || {
            Ok(Encoded::whole(
                reduce_to_pb(windows, pending.to_pb()).encode_to_vec(),
            ))
        }))
    }

    async fn on_commit(&mut self, cmd: &CheckpointCmd) -> Result<()> {
        self.output.on_complete(cmd.epoch).await
    }
}
