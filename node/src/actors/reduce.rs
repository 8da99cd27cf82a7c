//! The Reduce actor: merges the Aggregate actors' local top-N lists into the
//! exact global top-N and writes it to the aggregates topic.

use super::ActorCtx;
use crate::convert::top_from_pb;
use crate::kafka::sink::OutputSink;
use adclick_core::output::OutputRecord;
use adclick_core::reduce::ReduceState;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::Watermark;
use anyhow::Result;
use tokio::sync::mpsc;

/// Runs the Reduce actor until cancelled or its inputs close.
pub async fn run(ctx: ActorCtx, mut mailbox: mpsc::Receiver<super::Inbound>) -> Result<()> {
    let cfg = ctx.cfg.clone();
    let actor = ctx.id.to_string();
    let sink = OutputSink::new(adclick_runtime::kafka::producer(&cfg.kafka.bootstrap)?, cfg.kafka.output_topic.clone());
    let mut state = ReduceState::new(
        ctx.num_aggregates as usize,
        cfg.job.top_n as usize,
        cfg.job.allowed_lateness_ms as i64,
        actor.clone(),
    );
    ctx.report("running", None);
    tracing::info!(actor = %actor, "reduce started");
    loop {
        let msg = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            m = mailbox.recv() => m,
        };
        let Some(msg) = msg else { return Ok(()) };
        let Some(input) = ActorCtx::input_index(&msg.from) else { continue };
        let records: Vec<OutputRecord> = match msg.body {
            Body::Top(batch) => batch
                .lists
                .into_iter()
                .filter_map(|l| state.on_local(input, top_from_pb(l)))
                .map(OutputRecord::TopN)
                .collect(),
            Body::Watermark(Watermark { timestamp_ms, idle }) => {
                let emitted = if idle { state.on_idle(input) } else { state.on_watermark(input, timestamp_ms) };
                let out = emitted.into_iter().map(OutputRecord::TopN).collect();
                ctx.report("running", state.watermark());
                out
            }
            _ => continue,
        };
        sink.write(&records).await?;
    }
}
