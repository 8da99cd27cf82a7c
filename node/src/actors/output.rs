//! Where an Aggregate or Reduce actor's output goes: straight to Kafka
//! (at-least-once), or through the write-ahead buffer that commits one
//! transaction per completed checkpoint (exactly-once).

use crate::kafka::background::{BackgroundWriter, Committer};
use crate::kafka::commit_sink::CommitSink;
use crate::kafka::sink::{OutputSink, Topics};
use crate::pending_codec::{pending_from_pb, pending_to_pb};
use adclick_core::checkpoint::{sink_recovery, PendingOutput, SinkRecovery};
use adclick_core::output::OutputRecord;
use adclick_proto::snapshot::PendingEpoch;
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Uncommitted output a snapshot holds, taken at a barrier.
#[derive(Default)]
pub struct SavedOutput {
    producer: String,
    /// Handed to the committer, not confirmed: several epochs each.
    inflight: Vec<Arc<Vec<OutputRecord>>>,
    /// Closed epochs whose checkpoint has not completed.
    pending: Vec<(u64, Arc<Vec<OutputRecord>>)>,
}

impl SavedOutput {
    /// The snapshot's form: one entry per epoch.
    pub fn to_pb(&self) -> Vec<PendingEpoch> {
        self.to_pb_except(|_| false)
    }

    /// The snapshot's form of the epochs `skip` does not name (their
    /// output is durable already, as a shared object an earlier snapshot
    /// wrote); those are not converted at all.
    pub fn to_pb_except(&self, skip: impl Fn(u64) -> bool) -> Vec<PendingEpoch> {
        let mut saved: Vec<PendingEpoch> = Vec::new();
        for records in &self.inflight {
            saved.extend(
                records
                    .chunk_by(|a, b| a.version().0 == b.version().0)
                    .filter(|chunk| !skip(chunk[0].version().0))
                    .map(|chunk| pending_to_pb(chunk[0].version().0, &self.producer, chunk)),
            );
        }
        saved.extend(
            self.pending
                .iter()
                .filter(|(e, _)| !skip(*e))
                .map(|(e, recs)| pending_to_pb(*e, &self.producer, recs)),
        );
        saved
    }

    /// Every epoch the saved output holds records of.
    pub fn epochs(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .inflight
            .iter()
            .flat_map(|records| {
                records
                    .chunk_by(|a, b| a.version().0 == b.version().0)
                    .map(|chunk| chunk[0].version().0)
                    .collect::<Vec<_>>()
            })
            .chain(self.pending.iter().map(|(e, _)| *e))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The actor's output channel.
pub enum Output {
    /// Written at once, in the background; repeated after a recovery.
    AtLeastOnce(BackgroundWriter),
    /// Buffered per epoch, saved in snapshots, committed on completion.
    ExactlyOnce(Box<ExactlyOnce>),
}

/// The write-ahead state of an exactly-once output.
pub struct ExactlyOnce {
    /// Commits completed checkpoints' output beside the actor.
    committer: Committer,
    /// Output of the epoch the next barrier closes.
    open: Vec<OutputRecord>,
    /// Closed epochs whose checkpoint has not completed yet.
    pending: PendingOutput,
    /// Handed to the committer, not confirmed yet; still saved in every
    /// snapshot, keyed by the completed epoch that covers them.
    inflight: BTreeMap<u64, Arc<Vec<OutputRecord>>>,
    /// The actor, stored once per saved epoch.
    producer: String,
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
                adclick_runtime::kafka::shared_producer(&k.bootstrap)?,
                Topics::from_config(k),
            ))));
        }
        let sink = CommitSink::open(cfg, actor).await?;
        if let Some((epoch, saved)) = restored {
            commit_saved(&sink, actor, epoch, saved).await?;
        }
        Ok(Output::ExactlyOnce(Box::new(ExactlyOnce {
            committer: Committer::new(sink),
            open: Vec::new(),
            pending: PendingOutput::default(),
            inflight: BTreeMap::new(),
            producer: actor.to_owned(),
        })))
    }

    /// Emits records.
    pub async fn emit(&mut self, records: Vec<OutputRecord>) -> Result<()> {
        match self {
            Output::AtLeastOnce(w) => w.send(records).await,
            Output::ExactlyOnce(x) => {
                x.open.extend(records);
                Ok(())
            }
        }
    }

    /// Closes the open epoch at barrier `epoch` and returns what the
    /// snapshot must hold: every epoch not confirmed committed. Records are
    /// shared, not copied or encoded here: [`SavedOutput::to_pb`] does
    /// that, off the actor for an Aggregate.
    pub fn on_barrier(&mut self, epoch: u64) -> Result<SavedOutput> {
        let Output::ExactlyOnce(x) = self else {
            return Ok(SavedOutput::default());
        };
        x.forget_committed();
        let open = std::mem::take(&mut x.open);
        x.pending.push(epoch, open);
        let waiting: usize = x.inflight.values().map(|v| v.len()).sum();
        // A sink slower than the job shows here first (and makes every
        // snapshot carry the backlog).
        metrics::gauge!("output_uncommitted_records", "actor" => x.producer.clone())
            .set((waiting + x.pending.records()) as f64);
        Ok(SavedOutput {
            producer: x.producer.clone(),
            inflight: x.inflight.values().cloned().collect(),
            pending: x.pending.upto(epoch).collect(),
        })
    }

    /// Checkpoint `epoch` is complete: hand everything up to it to the
    /// committer.
    pub async fn on_complete(&mut self, epoch: u64) -> Result<()> {
        let Output::ExactlyOnce(x) = self else {
            return Ok(());
        };
        #[cfg(feature = "failpoints")]
        if std::env::var("ADCLICK_FAILPOINT").is_ok_and(|v| v == "crash_before_commit") {
            tracing::error!(
                epoch,
                "fail point crash_before_commit: aborting the process"
            );
            std::process::abort();
        }
        x.forget_committed();
        let records = x.pending.take_upto(epoch);
        x.inflight.insert(epoch, records.clone());
        x.committer.commit(epoch, records).await
    }
}

impl ExactlyOnce {
    /// Drops the epochs the committer has confirmed.
    fn forget_committed(&mut self) {
        if let Some(c) = self.committer.committed() {
            self.inflight = self.inflight.split_off(&(c + 1));
        }
    }
}

/// Commits the output `actor` saved in restored checkpoint `epoch`, unless
/// its marker shows it was committed before the crash.
async fn commit_saved(
    sink: &CommitSink,
    actor: &str,
    epoch: u64,
    saved: Vec<PendingEpoch>,
) -> Result<()> {
    let marker = sink.committed_epoch().await?;
    match sink_recovery(marker, epoch) {
        SinkRecovery::AlreadyCommitted => {
            tracing::info!(actor, epoch, ?marker, "restored output already committed")
        }
        SinkRecovery::CommitSaved => {
            let mut pending = PendingOutput::default();
            // Epochs up to the marker were committed before the crash.
            for p in saved
                .into_iter()
                .filter(|p| marker.is_none_or(|m| p.epoch > m))
            {
                let e = p.epoch;
                pending.restore(e, pending_from_pb(p)?);
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
    Ok(())
}

/// After a scale-down, an Aggregate that no longer exists may have saved
/// output in the restored checkpoint that was never committed: a surviving
/// Aggregate commits it under the retired actor's name (its marker, and in
/// transactional mode its fenced transactional id), so nothing is lost and
/// nothing is written twice.
pub async fn commit_retired(
    cfg: &adclick_core::config::Config,
    retired: &str,
    epoch: u64,
    saved: Vec<PendingEpoch>,
) -> Result<()> {
    if !cfg.checkpoint.exactly_once {
        // At-least-once output was written when it was produced.
        return Ok(());
    }
    let sink = CommitSink::open(cfg, retired).await?;
    if matches!(sink, CommitSink::Transactional(_)) {
        // Opening it ran init_transactions on the retired actor's id: a
        // transaction it left open is aborted now, instead of holding every
        // read_committed reader at the last stable offset until it times
        // out.
        metrics::counter!("sink_retired_ids_fenced_total").increment(1);
        tracing::info!(retired, "initialised the retired actor's transactional id (its open transaction, if any, is aborted)");
    }
    commit_saved(&sink, retired, epoch, saved).await
}
