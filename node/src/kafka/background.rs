//! Kafka writes that run beside the actor instead of inside its loop, so a
//! large write does not stall the dataflow behind it.
//!
//! - [`BackgroundWriter`]: at-least-once output, batches in order.
//! - [`Committer`]: exactly-once commits, one per completed checkpoint, in
//!   epoch order. The actor keeps every handed-over epoch in its snapshots
//!   until the committer confirms it, so a crash at any moment leaves the
//!   output either committed (the marker says so) or saved.

use super::commit_sink::CommitSink;
use super::sink::OutputSink;
use adclick_core::output::OutputRecord;
use anyhow::{anyhow, Context, Result};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Waits for a stopped writer task and turns its end into an error.
async fn stopped(task: Option<JoinHandle<Result<()>>>, what: &str) -> Result<()> {
    if let Some(task) = task {
        task.await
            .with_context(|| format!("{what} panicked"))?
            .with_context(|| format!("{what} failed"))?;
    }
    Err(anyhow!("{what} stopped"))
}

/// Writes batches in order on a task of its own, so the actor does not wait
/// for the broker's acknowledgement of every batch (nothing waits for it in
/// at-least-once mode: there are no checkpoints to hold back). Queued
/// batches are merged into one write.
pub struct BackgroundWriter {
    tx: mpsc::Sender<Vec<OutputRecord>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl BackgroundWriter {
    /// Starts the writer task.
    pub fn new(sink: OutputSink) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<OutputRecord>>(16);
        let task = tokio::spawn(async move {
            while let Some(mut batch) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    batch.extend(more);
                }
                sink.write(&batch).await?;
            }
            Ok(())
        });
        Self {
            tx,
            task: Some(task),
        }
    }

    /// Queues `records`; fails with the writer's error once it has stopped.
    pub async fn send(&mut self, records: Vec<OutputRecord>) -> Result<()> {
        if records.is_empty() || self.tx.send(records).await.is_ok() {
            return Ok(());
        }
        stopped(self.task.take(), "output writer").await
    }
}

/// Commits completed checkpoints' output in epoch order, beside the actor.
pub struct Committer {
    tx: mpsc::Sender<(u64, Arc<Vec<OutputRecord>>, tracing::Span)>,
    committed: watch::Receiver<Option<u64>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl Committer {
    /// Starts the commit task. At most a few commits queue up; beyond that
    /// `commit` waits, which slows the actor down instead of growing memory.
    pub fn new(sink: CommitSink) -> Self {
        let (tx, mut rx) = mpsc::channel::<(u64, Arc<Vec<OutputRecord>>, tracing::Span)>(4);
        let (done, committed) = watch::channel(None);
        let task = tokio::spawn(async move {
            while let Some((epoch, records, span)) = rx.recv().await {
                sink.commit(epoch, records).instrument(span).await?;
                done.send_replace(Some(epoch));
            }
            Ok(())
        });
        Self {
            tx,
            committed,
            task: Some(task),
        }
    }

    /// Queues the commit of `epoch` (its records cover every epoch up to it).
    /// The commit runs inside the caller's current span, so a trace shows
    /// when the records really reached the broker.
    pub async fn commit(&mut self, epoch: u64, records: Arc<Vec<OutputRecord>>) -> Result<()> {
        let span = tracing::Span::current();
        if self.tx.send((epoch, records, span)).await.is_ok() {
            return Ok(());
        }
        stopped(self.task.take(), "output committer").await
    }

    /// The newest epoch whose commit has finished.
    pub fn committed(&self) -> Option<u64> {
        *self.committed.borrow()
    }
}

impl Drop for Committer {
    /// A cancelled actor's commits stop with it: the next incarnation
    /// commits whatever its checkpoint saved.
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
