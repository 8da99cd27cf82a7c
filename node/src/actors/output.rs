//! Where an Aggregate or Reduce actor's output goes: straight to Kafka
//! (at-least-once), or through the write-ahead buffer that commits one
//! transaction per completed checkpoint (exactly-once).

use crate::kafka::commit_sink::CommitSink;
use crate::kafka::sink::{OutputSink, Topics};
use crate::pending_codec::{pending_from_pb, pending_to_pb};
use adclick_core::checkpoint::{sink_recovery, PendingOutput, SinkRecovery};
use adclick_core::output::OutputRecord;
use adclick_proto::snapshot::PendingEpoch;
use anyhow::{anyhow, Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The actor's output channel.
pub enum Output {
    /// Written at once, in the background; repeated after a recovery.
    AtLeastOnce(BackgroundWriter),
    /// Buffered per epoch, saved in snapshots, committed on completion.
    ExactlyOnce {
        /// Commits one checkpoint's output with its progress marker.
        sink: CommitSink,
        /// Output of the epoch the next barrier closes.
        open: Vec<OutputRecord>,
        /// Closed epochs not committed yet.
        pending: PendingOutput,
        /// The actor, stored once per saved epoch.
        producer: String,
    },
}

impl Output {
    /// Opens the output for `actor`; in exactly-once mode this fences the
    /// previous incarnation and commits saved output the crash left behind.
    pub async fn open(
        cfg: &adclick_core::config::Config,
        actor: &str,
        restored: Option<(u64, Vec<PendingEpoch>)>,
    ) -> Result<Self> {
        let k = &cfg.kafka;
        if !cfg.checkpoint.exactly_once {
            return Ok(Output::AtLeastOnce(BackgroundWriter::new(OutputSink::new(
                adclick_runtime::kafka::producer(&k.bootstrap)?,
                Topics::from_config(k),
            ))));
        }
        let sink = CommitSink::open(cfg, actor).await?;
        let mut pending = PendingOutput::default();
        if let Some((epoch, saved)) = restored {
            let marker = sink.committed_epoch().await?;
            match sink_recovery(marker, epoch) {
                SinkRecovery::AlreadyCommitted => {
                    tracing::info!(actor, epoch, ?marker, "restored output already committed")
                }
                SinkRecovery::CommitSaved => {
                    for p in saved {
                        let epoch = p.epoch;
                        pending.restore(epoch, pending_from_pb(p)?);
                    }
                    let records = pending.take_upto(epoch);
                    tracing::info!(
                        actor,
                        epoch,
                        ?marker,
                        records = records.len(),
                        "committing output saved in the restored checkpoint"
                    );
                    sink.commit(epoch, records).await?;
                }
            }
        }
        Ok(Output::ExactlyOnce {
            sink,
            open: Vec::new(),
            pending,
            producer: actor.to_owned(),
        })
    }

    /// Emits records.
    pub async fn emit(&mut self, records: Vec<OutputRecord>) -> Result<()> {
        match self {
            Output::AtLeastOnce(w) => w.send(records).await,
            Output::ExactlyOnce { open, .. } => {
                open.extend(records);
                Ok(())
            }
        }
    }

    /// Closes the open epoch at barrier `epoch` and returns what the
    /// snapshot must hold.
    pub fn on_barrier(&mut self, epoch: u64) -> Result<Vec<PendingEpoch>> {
        match self {
            Output::AtLeastOnce(_) => Ok(Vec::new()),
            Output::ExactlyOnce {
                open,
                pending,
                producer,
                ..
            } => {
                pending.push(epoch, std::mem::take(open));
                Ok(pending
                    .upto(epoch)
                    .map(|(e, recs)| pending_to_pb(e, producer, recs))
                    .collect())
            }
        }
    }

    /// Checkpoint `epoch` is complete: commit everything up to it.
    pub async fn on_complete(&mut self, epoch: u64) -> Result<()> {
        if let Output::ExactlyOnce { sink, pending, .. } = self {
            #[cfg(feature = "failpoints")]
            if std::env::var("ADCLICK_FAILPOINT").is_ok_and(|v| v == "crash_before_commit") {
                tracing::error!(
                    epoch,
                    "fail point crash_before_commit: aborting the process"
                );
                std::process::abort();
            }
            let records = pending.take_upto(epoch);
            sink.commit(epoch, records).await?;
        }
        Ok(())
    }
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
        match self.task.take() {
            Some(task) => task.await.context("output writer panicked")?,
            None => Ok(()),
        }
        .and(Err(anyhow!("output writer stopped")))
    }
}
