//! The one actor runtime. Map, Aggregate and Reduce implement [`Actor`]
//! (Map also [`Source`]); [`run`] and [`run_source`] own everything they
//! have in common: the select over cancellation, checkpoint commands and
//! input, barrier alignment, and the snapshot → barrier → write → ack
//! sequence, with the write off the actor's task. An actor says only what
//! its input means and what its snapshot holds, so a fix to checkpointing
//! is made once, not once per actor kind.

use super::{superseded, ActorCtx, CheckpointCmd, Control, Inbound};
use crate::edge::Edge;
use crate::inputs::Inputs;
use adclick_core::align::{requeue, Aligned, BarrierAligner, BarrierStep};
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{Barrier, Watermark};
use anyhow::Result;
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

/// A frozen snapshot, to be encoded on a blocking thread: the actor goes
/// on while it is encoded and written.
pub type Encode<W> = Box<dyn FnOnce() -> Result<Encoded<W>> + Send>;

/// An encoded snapshot: what the runner writes, in order, and acks.
pub struct Encoded<W> {
    /// New shared objects (an incremental snapshot's changed parts),
    /// written before the snapshot that references them.
    pub shared: Vec<(String, Vec<u8>)>,
    /// The actor's own snapshot object (an incremental one's manifest).
    pub snapshot: Vec<u8>,
    /// Every shared object the snapshot references, new or kept: the
    /// coordinator's retention must keep them while the checkpoint lives.
    pub references: Vec<String>,
    /// What the next snapshot may reference instead of writing again.
    pub next: W,
}

impl Encoded<()> {
    /// A snapshot written whole, in one object.
    pub fn whole(snapshot: Vec<u8>) -> Self {
        Self {
            shared: Vec::new(),
            snapshot,
            references: Vec::new(),
            next: (),
        }
    }
}

/// What the runner needs from an actor. The hooks run on the actor's task;
/// an error fails the actor, which is redeployed from its checkpoint.
pub trait Actor: Send {
    /// What a durable snapshot lets the next one reference; `()` for an
    /// actor whose snapshots are written whole.
    type Written: Default + Send + 'static;

    /// The actor's context.
    fn ctx(&self) -> &ActorCtx;

    /// The edges a barrier goes on to once the snapshot is frozen.
    fn downstream(&self) -> &[Edge];

    /// A data message (counts, top-N lists) from input `input`.
    fn on_data(&mut self, input: usize, body: Body) -> impl Future<Output = Result<()>> + Send {
        let _ = (input, body);
        async { Ok(()) }
    }

    /// A watermark from input `input`.
    fn on_watermark(
        &mut self,
        input: usize,
        watermark: Watermark,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (input, watermark);
        async { Ok(()) }
    }

    /// Checkpoint `cmd.epoch`: every input is aligned. Freeze what the
    /// snapshot holds, cheaply (this is the time the actor is paused), and
    /// return how to encode it; `previous` is what the last durable
    /// snapshot wrote. The barrier goes downstream when this returns.
    fn on_barrier(
        &mut self,
        cmd: &CheckpointCmd,
        previous: Self::Written,
    ) -> impl Future<Output = Result<Encode<Self::Written>>> + Send;

    /// Checkpoint `cmd.epoch` is complete: commit its output.
    fn on_commit(&mut self, cmd: &CheckpointCmd) -> impl Future<Output = Result<()>> + Send {
        let _ = cmd;
        async { Ok(()) }
    }

    /// Between reads (sources): send what was read, and watermarks.
    fn on_tick(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// An actor that reads from outside the cluster (Map reads Kafka) instead
/// of from a mailbox; its barriers come from the coordinator.
pub trait Source: Actor {
    /// The longest a batch gathers before [`Actor::on_tick`], counted
    /// from its first record.
    fn batch_window(&self) -> Duration;

    /// How long a tick waits for a first record before ticking anyway (to
    /// send watermarks and notice idle inputs). An idle source then wakes
    /// a few times a second instead of once per batch window.
    fn idle_window(&self) -> Duration {
        self.batch_window()
    }

    /// Whether the batch is full, so [`Actor::on_tick`] is due now.
    fn batch_full(&self) -> bool;

    /// Reads and takes in one record; `false` when none came by
    /// `deadline`. Must be cancel safe: a barrier may interrupt it at its
    /// await, and nothing read may be lost then.
    fn read_until(&mut self, deadline: Instant) -> impl Future<Output = Result<bool>> + Send;
}

/// Runs an actor fed by its inputs' mailboxes until cancelled or every
/// input closes, aligning barriers over them. `restored` is what the
/// snapshot it restored from lets its first checkpoint reference.
pub async fn run<A: Actor>(
    mut actor: A,
    restored: A::Written,
    mut inputs: Inputs,
    inputs_count: usize,
    mut control: mpsc::Receiver<Control>,
) -> Result<()> {
    let cancel = actor.ctx().cancel.clone();
    let name = actor.ctx().id.to_string();
    let mut aligner: BarrierAligner<Inbound> = BarrierAligner::new(inputs_count);
    let mut alignment = Alignment::default();
    let mut checkpoints = Checkpoints {
        writing: None,
        written: restored,
    };
    let mut work: VecDeque<Inbound> = VecDeque::new();
    loop {
        let msg = match work.pop_front() {
            Some(m) => m,
            None => {
                let blocked = aligner.blocked_inputs();
                let next = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    c = control.recv() => Next::Control(c),
                    m = inputs.recv(&blocked) => Next::Got(m),
                };
                match next {
                    Next::Control(Some(Control::Complete(cmd))) => {
                        commit(&mut actor, &cmd).await?;
                        continue;
                    }
                    // Barriers reach this actor through its inputs.
                    Next::Control(Some(Control::Barrier(_))) => continue,
                    Next::Control(None) | Next::Got(None) => return Ok(()),
                    Next::Got(Some(m)) => m,
                }
            }
        };
        let input = msg.input as usize;
        if let Body::Barrier(Barrier { epoch, traceparent }) = &msg.body {
            let (epoch, traceparent) = (*epoch, traceparent.clone());
            match aligner.barrier(input, epoch, msg) {
                BarrierStep::Waiting => alignment.note(traceparent),
                BarrierStep::Aligned(e) => {
                    alignment.note(traceparent);
                    let (alignment_ms, traceparent) = alignment.finish();
                    let cmd = CheckpointCmd {
                        epoch: e,
                        traceparent,
                        drain: false,
                    };
                    checkpoints.take(&mut actor, &cmd, alignment_ms).await?;
                    requeue(&mut work, aligner.release());
                }
                BarrierStep::Superseded { abandoned, replay } => {
                    alignment.started = None;
                    superseded(&name, abandoned, epoch);
                    requeue(&mut work, replay);
                }
                BarrierStep::Buffered | BarrierStep::Stale => {}
            }
            continue;
        }
        let msg = match aligner.offer(input, msg) {
            Aligned::Process(m) => m,
            Aligned::Buffered => continue,
        };
        match msg.body {
            Body::Watermark(w) => actor.on_watermark(input, w).await?,
            body => actor.on_data(input, body).await?,
        }
    }
}

/// Runs a source actor until cancelled: it reads in batches, each ended by
/// its window, a full batch or a barrier, and after a batch's
/// [`Actor::on_tick`] takes the barrier's checkpoint, so the snapshot
/// holds exactly what was sent before the barrier.
pub async fn run_source<A: Source>(
    mut actor: A,
    mut control: mpsc::Receiver<Control>,
) -> Result<()> {
    let cancel = actor.ctx().cancel.clone();
    let mut checkpoints = Checkpoints {
        writing: None,
        written: A::Written::default(),
    };
    loop {
        let mut deadline = Instant::now() + actor.idle_window();
        let mut gathering = false;
        let mut barrier = None;
        while barrier.is_none() && !actor.batch_full() {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                c = control.recv() => Next::Control(c),
                more = actor.read_until(deadline) => Next::Got(more?),
            };
            match next {
                Next::Control(Some(Control::Barrier(cmd))) => barrier = Some(cmd),
                Next::Control(Some(Control::Complete(cmd))) => commit(&mut actor, &cmd).await?,
                Next::Control(None) => return Ok(()),
                Next::Got(true) if !gathering => {
                    // The batch starts now: no record waits longer than
                    // the batch window for its tick.
                    gathering = true;
                    deadline = deadline.min(Instant::now() + actor.batch_window());
                }
                Next::Got(true) => {}
                Next::Got(false) => break,
            }
        }
        actor.on_tick().await?;
        if let Some(cmd) = barrier {
            checkpoints.take(&mut actor, &cmd, 0).await?;
        }
    }
}

/// What woke the runner: a checkpoint command, or input (`T`).
enum Next<T> {
    Control(Option<Control>),
    Got(T),
}

/// Commits checkpoint `cmd.epoch`'s output, in the commit's span.
async fn commit<A: Actor>(actor: &mut A, cmd: &CheckpointCmd) -> Result<()> {
    let span = actor.ctx().commit_span(cmd);
    actor.on_commit(cmd).instrument(span).await
}

/// The alignment in progress: when its first barrier came, and the trace
/// of the checkpoint (the same on every input).
#[derive(Default)]
struct Alignment {
    started: Option<Instant>,
    traceparent: String,
}

impl Alignment {
    fn note(&mut self, traceparent: String) {
        self.started.get_or_insert_with(Instant::now);
        if !traceparent.is_empty() {
            self.traceparent = traceparent;
        }
    }

    /// The alignment's duration and trace, for the checkpoint it ends in.
    fn finish(&mut self) -> (u64, String) {
        let ms = self
            .started
            .take()
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        (ms, std::mem::take(&mut self.traceparent))
    }
}

/// An actor's checkpoints: at most one snapshot being written, and what
/// the last durable one wrote.
struct Checkpoints<W> {
    writing: Option<JoinHandle<Option<W>>>,
    written: W,
}

impl<W: Default + Send + 'static> Checkpoints<W> {
    /// Takes `actor`'s part of checkpoint `cmd.epoch`: waits for the
    /// previous snapshot's write (so frozen copies cannot pile up), freezes
    /// the state, sends the barrier on, and writes and acks the snapshot on
    /// another task. The ack goes out only once the snapshot is durable; a
    /// failed write (store full, read-only or unreachable) is not acked, so
    /// the coordinator aborts that checkpoint while the actor keeps running
    /// and the next snapshot writes everything again.
    async fn take<A: Actor<Written = W>>(
        &mut self,
        actor: &mut A,
        cmd: &CheckpointCmd,
        alignment_ms: u64,
    ) -> Result<()> {
        let ctx = actor.ctx().clone();
        let span = ctx.snapshot_span(cmd.epoch, &cmd.traceparent);
        if let Some(previous) = self.writing.take() {
            let waited = Instant::now();
            self.written = match previous.await {
                Ok(Some(written)) => written,
                Ok(None) => W::default(),
                Err(e) => {
                    tracing::error!(actor = %ctx.id, "snapshot writer task failed: {e}");
                    W::default()
                }
            };
            metrics::histogram!("checkpoint_previous_write_wait_ms")
                .record(waited.elapsed().as_secs_f64() * 1e3);
        }
        let paused = Instant::now();
        let (thread, cpu) = (std::thread::current().id(), crate::thread_cpu::now());
        let previous = std::mem::take(&mut self.written);
        let encode = actor
            .on_barrier(cmd, previous)
            .instrument(span.clone())
            .await?;
        let frozen = paused.elapsed();
        // The freeze's own CPU, if it ran on one thread (it does not
        // yield): the rest of its wall time was spent waiting for a core.
        let freeze_cpu = (std::thread::current().id() == thread)
            .then(|| crate::thread_cpu::now().saturating_sub(cpu).as_micros() as u64);
        let barrier = Body::Barrier(Barrier {
            epoch: cmd.epoch,
            traceparent: cmd.traceparent.clone(),
        });
        for edge in actor.downstream() {
            edge.send(barrier.clone()).await?;
        }
        let pause = paused.elapsed();
        metrics::histogram!("checkpoint_pause_ms").record(pause.as_secs_f64() * 1e3);
        tracing::info!(
            actor = %ctx.id,
            epoch = cmd.epoch,
            pause_us = pause.as_micros() as u64,
            freeze_us = frozen.as_micros() as u64,
            freeze_cpu_us = freeze_cpu,
            "checkpoint state frozen; encoding and writing it off the actor"
        );
        let write = write(ctx, cmd.epoch, encode, alignment_ms);
        self.writing = Some(tokio::spawn(write.instrument(span)));
        Ok(())
    }
}

impl<W> Drop for Checkpoints<W> {
    /// A stopped actor's snapshot write is abandoned: its generation is
    /// over, so its ack would be refused, and a late write must not land
    /// beside the next generation's. (A graceful stop waits for its final
    /// checkpoint's acks before cancelling, so nothing it needs is lost.)
    fn drop(&mut self) {
        if let Some(write) = self.writing.take() {
            write.abort();
        }
    }
}

/// Encodes and writes a snapshot of `epoch`, then acks it. Returns what it
/// wrote once durable, `None` when anything failed.
async fn write<W: Send + 'static>(
    ctx: ActorCtx,
    epoch: u64,
    encode: Encode<W>,
    alignment_ms: u64,
) -> Option<W> {
    let encoded = match tokio::task::spawn_blocking(encode).await {
        Ok(Ok(encoded)) => encoded,
        Ok(Err(e)) => return failed(&ctx, epoch, &format!("{e:#}")),
        Err(e) => return failed(&ctx, epoch, &format!("encoding task: {e}")),
    };
    let Encoded {
        shared,
        snapshot,
        references,
        next,
    } = encoded;
    let mut size = snapshot.len();
    let new_objects = shared.len();
    for (object, bytes) in shared {
        size += bytes.len();
        if let Err(e) = ctx.snapshots.put_shared(&object, bytes).await {
            return failed(&ctx, epoch, &format!("{e:#}"));
        }
    }
    if !references.is_empty() {
        metrics::counter!("snapshot_objects_referenced_total")
            .increment(references.len().saturating_sub(new_objects) as u64);
    }
    // A failed write fails only the checkpoint: the actor keeps running
    // and forwards the barrier but does not ack, so the coordinator aborts
    // the checkpoint at its timeout and counts it, and the epoch's output
    // goes out with the next complete checkpoint. Killing the actor instead
    // would stop the job for a problem that checkpoints alone suffer from.
    let name = ctx.id.to_string();
    if let Err(e) = ctx.snapshots.put(epoch, &name, snapshot).await {
        return failed(&ctx, epoch, &format!("{e:#}"));
    }
    if let Err(e) = ctx.ack(epoch, size, alignment_ms, references).await {
        tracing::warn!(actor = %ctx.id, epoch, "checkpoint ack failed: {e:#}");
    }
    Some(next)
}

fn failed<W>(ctx: &ActorCtx, epoch: u64, why: &str) -> Option<W> {
    metrics::counter!("snapshot_write_failures_total").increment(1);
    tracing::error!(
        actor = %ctx.id,
        epoch,
        "snapshot not written, so checkpoint {epoch} fails: {why}"
    );
    None
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
