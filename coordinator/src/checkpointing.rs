//! The checkpoint coordinator: triggers barriers, collects acks, writes the
//! metadata file last, tells sinks to commit, aborts checkpoints that time
//! out, deletes old checkpoints and persists its own metadata so a
//! restarted coordinator carries on where the old one stopped.

use crate::history::{CheckpointRecord, Outcome};
use crate::registry::{ClusterState, Inflight, JobState};
use crate::states::Event;
use adclick_core::checkpoint::{checkpoints_to_delete, restore_choice, shared, CheckpointFiles};
use adclick_core::config::Config;
use adclick_proto::cluster::CheckpointRequest;
use adclick_runtime::snapshots::SnapshotStore;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::Instrument;

/// The coordinator's own metadata in the snapshot store.
#[derive(Serialize, Deserialize, Default)]
struct CoordinatorState {
    generation: u64,
    next_epoch: u64,
    /// `job.key_groups` of the job (absent in state written before it was
    /// stored).
    #[serde(default)]
    key_groups: Option<u32>,
}

/// Drives checkpoints for the job.
pub struct Checkpointer {
    cfg: Config,
    store: SnapshotStore,
}

impl Checkpointer {
    /// Opens the snapshot store.
    pub fn new(cfg: Config) -> Result<Self> {
        let store = SnapshotStore::open(&cfg.checkpoint.store, &cfg.cluster.job_name)?;
        Ok(Self { cfg, store })
    }

    /// Reloads the persisted generation and epoch counter after a restart.
    pub async fn load(&self, state: &Arc<Mutex<ClusterState>>) -> Result<()> {
        let saved: CoordinatorState = match self.store.coordinator_state().await? {
            Some(b) => serde_json::from_slice(&b).context("decoding coordinator state")?,
            None => CoordinatorState::default(),
        };
        adclick_core::keygroup::check_key_groups(saved.key_groups, self.cfg.job.key_groups)
            .map_err(|e| anyhow::anyhow!(e))?;
        let (all, complete) = self.store.epochs().await?;
        let mut s = state.lock().await;
        s.generation = s.generation.max(saved.generation);
        s.next_epoch = saved.next_epoch.max(all.last().map_or(1, |e| e + 1)).max(1);
        if let Some(e) = complete.last() {
            tracing::info!(
                generation = s.generation,
                last_checkpoint = e,
                next_epoch = s.next_epoch,
                "loaded coordinator metadata"
            );
        }
        Ok(())
    }

    /// The snapshot store.
    pub fn store(&self) -> &SnapshotStore {
        &self.store
    }

    /// Persists generation and epoch counter.
    pub async fn persist(&self, generation: u64, next_epoch: u64) -> Result<()> {
        self.store
            .put_coordinator_state(serde_json::to_vec(&CoordinatorState {
                generation,
                next_epoch,
                key_groups: Some(self.cfg.job.key_groups),
            })?)
            .await
    }

    /// The checkpoint a redeploy restores from (0 = none): the newest
    /// complete one that is whole (`adclick_core::checkpoint::restore_choice`).
    pub async fn restore_point(
        &self,
        superseded: Option<crate::savepoints::Superseded>,
    ) -> Result<u64> {
        if !self.cfg.checkpoint.exactly_once {
            return Ok(0);
        }
        let (_, mut complete) = self.store.epochs().await?;
        // After `adclickctl restore`, the abandoned history's checkpoints
        // are not restored: the savepoint is, until the job takes its own.
        if let Some(s) = superseded {
            complete.retain(|e| !s.skips(*e));
        }
        let mut files = Vec::new();
        // Newest first, and only as far back as the first whole one.
        for epoch in complete.iter().rev().copied() {
            let listed = self.store.listed_actors(epoch).await.ok();
            let present: BTreeSet<String> = self.store.actors(epoch).await?.into_iter().collect();
            // Reads every listed snapshot once: a damaged one is found
            // here, with its name, rather than by the node that restores it.
            let mut damaged = BTreeMap::new();
            for actor in listed.iter().flatten().filter(|a| present.contains(*a)) {
                if let Some(why) = self.store.damage(epoch, actor).await? {
                    damaged.insert(actor.clone(), why.to_string());
                }
            }
            // And every window an incremental snapshot references, charged
            // to the actor that wrote it, or, when that one is gone (a
            // rescaled Aggregate references its predecessors' windows), to
            // the first Aggregate the checkpoint lists.
            for object in self.store.shared_refs(epoch).await.unwrap_or_default() {
                if let Some(why) = self.store.shared_problem(&object).await? {
                    let writer = object.split('/').next().unwrap_or(&object);
                    let names = listed.iter().flatten();
                    let actor = names
                        .clone()
                        .find(|a| a.as_str() == writer)
                        .or_else(|| names.clone().find(|a| a.starts_with("aggregate-")))
                        .map_or_else(|| writer.to_owned(), String::clone);
                    damaged
                        .entry(actor)
                        .or_insert_with(|| format!("shared object {object} {why}"));
                }
            }
            let c = CheckpointFiles {
                epoch,
                listed,
                present,
                damaged,
            };
            let whole = restore_choice(std::slice::from_ref(&c)).0.is_some();
            files.push(c);
            if whole {
                break;
            }
        }
        let (choice, skipped) = restore_choice(&files);
        for (epoch, why) in skipped {
            tracing::error!(
                epoch,
                "checkpoint cannot be restored, using an older one: {why}"
            );
            metrics::counter!("checkpoint_restore_skipped_total").increment(1);
        }
        if choice.is_none() && !complete.is_empty() {
            tracing::error!(
                "no complete checkpoint is whole; the job starts over from job.start_from"
            );
        }
        Ok(choice.unwrap_or(0))
    }

    /// One step: abort a late checkpoint, complete an acked one, or
    /// trigger the next one.
    pub async fn tick(&self, state: &Arc<Mutex<ClusterState>>) -> Result<()> {
        if !self.cfg.checkpoint.exactly_once {
            return Ok(());
        }
        let interval = Duration::from_millis(self.cfg.checkpoint.interval_ms);
        let timeout = Duration::from_millis(self.cfg.checkpoint.timeout_ms);
        enum Step {
            Complete(Inflight, Vec<String>, HashMap<String, String>),
            Trigger(u64, u64, Vec<String>, tracing::Span, bool),
            Nothing,
        }
        let step = {
            let mut s = state.lock().await;
            if !matches!(
                s.job_state,
                JobState::Running | JobState::Degraded | JobState::Rescaling | JobState::Stopping
            ) {
                return Ok(());
            }
            let addrs: HashMap<String, String> = s
                .nodes
                .iter()
                .map(|(id, n)| (id.clone(), n.addr.clone()))
                .collect();
            let nodes: Vec<String> = s
                .placements
                .iter()
                .map(|p| p.node_id.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let since_ok = s
                .last_complete
                .map(|(_, t)| t)
                .or(s.deployed_at)
                .map_or(Duration::ZERO, |t| t.elapsed());
            // Rescaling or stopping: that state says more.
            let stalled = since_ok > 3 * interval;
            if stalled && s.job_state == JobState::Running {
                let why = format!(
                    "no checkpoint completed for {} s (3 intervals)",
                    since_ok.as_secs()
                );
                s.transition(Event::CheckpointsStalled, why);
            } else if !stalled && s.job_state == JobState::Degraded {
                s.transition(Event::CheckpointsResumed, "checkpoints complete again");
            }
            let expected = s.placements.len();
            match s.inflight.clone() {
                Some(f) if f.acked.len() >= expected => {
                    s.inflight = None;
                    Step::Complete(f, nodes, addrs)
                }
                Some(f) if f.started.elapsed() > timeout => {
                    f.span.record("outcome", "timed out");
                    let reason = format!(
                        "timed out after {} ms with {} of {expected} acks",
                        timeout.as_millis(),
                        f.acked.len()
                    );
                    s.history.finish(
                        f.epoch,
                        Outcome::Aborted,
                        f.started.elapsed().as_millis() as u64,
                        &reason,
                    );
                    tracing::warn!(
                        epoch = f.epoch,
                        acked = f.acked.len(),
                        expected,
                        "checkpoint timed out; aborted"
                    );
                    metrics::counter!("checkpoint_failures_total").increment(1);
                    s.failed_checkpoints += 1;
                    s.inflight = None;
                    Step::Nothing
                }
                Some(_) => Step::Nothing,
                None => {
                    let settled = s
                        .deployed_at
                        .is_some_and(|t| t.elapsed() > Duration::from_secs(1))
                        || s.all_actors_running();
                    let due = s.trigger_requested
                        || s.last_trigger.is_none_or(|t| t.elapsed() >= interval);
                    if settled && due {
                        let trigger_kind = match s.trigger_kind {
                            k if s.trigger_requested && !k.is_empty() => k,
                            _ if s.trigger_requested => "manual",
                            _ => "interval",
                        };
                        let epoch = s.next_epoch;
                        s.next_epoch += 1;
                        s.last_trigger = Some(Instant::now());
                        let span = tracing::info_span!(
                            "checkpoint",
                            epoch,
                            generation = s.generation,
                            trigger = trigger_kind,
                            outcome = tracing::field::Empty,
                        );
                        s.trigger_requested = false;
                        s.trigger_kind = "";
                        let started_ms = adclick_runtime::now_ms();
                        s.inflight = Some(Inflight {
                            epoch,
                            generation: s.generation,
                            started: Instant::now(),
                            acked: BTreeSet::new(),
                            bytes: 0,
                            shared: BTreeSet::new(),
                            trigger: trigger_kind,
                            started_ms,
                            span: span.clone(),
                        });
                        let generation = s.generation;
                        s.history.started(CheckpointRecord {
                            epoch,
                            generation,
                            trigger: trigger_kind,
                            started_ms,
                            duration_ms: None,
                            alignment_ms: 0,
                            bytes: 0,
                            acked: 0,
                            expected,
                            outcome: Outcome::InProgress,
                            reason: String::new(),
                            alignments: Default::default(),
                        });
                        let targets = nodes.iter().filter_map(|n| addrs.get(n).cloned()).collect();
                        let drain = trigger_kind == crate::stop::trigger(true);
                        Step::Trigger(epoch, s.generation, targets, span, drain)
                    } else {
                        Step::Nothing
                    }
                }
            }
        };
        match step {
            Step::Trigger(epoch, generation, targets, span, drain) => {
                let trigger = tracing::info_span!(parent: &span, "inject_barriers", epoch);
                // The next epoch is persisted before any barrier goes out; a
                // store that refuses it (full, read-only) fails this
                // checkpoint at once instead of at its timeout.
                if let Err(e) = self
                    .persist(generation, epoch + 1)
                    .instrument(trigger.clone())
                    .await
                {
                    fail_checkpoint(state, epoch, &format!("the snapshot store: {e:#}")).await;
                    return Err(e);
                }
                async {
                    tracing::debug!(epoch, generation, "triggering checkpoint");
                    // The actors' snapshots are children of the checkpoint itself.
                    let tp = adclick_runtime::telemetry::traceparent(&span);
                    broadcast(
                        &targets,
                        generation,
                        epoch,
                        Broadcast::Barrier { drain },
                        &tp,
                    )
                    .await;
                    anyhow::Ok(())
                }
                .instrument(trigger)
                .await?;
            }
            Step::Complete(f, nodes, addrs) => {
                let epoch = f.epoch;
                if let Err(e) = self.complete(state, f, nodes, addrs).await {
                    // Only a checkpoint whose metadata was not written failed;
                    // a later step's error leaves it complete.
                    let completed = state
                        .lock()
                        .await
                        .last_complete
                        .is_some_and(|(e, _)| e == epoch);
                    if !completed {
                        fail_checkpoint(state, epoch, &format!("writing its metadata: {e:#}"))
                            .await;
                    }
                    return Err(e);
                }
            }
            Step::Nothing => {}
        }
        Ok(())
    }

    async fn complete(
        &self,
        state: &Arc<Mutex<ClusterState>>,
        f: Inflight,
        nodes: Vec<String>,
        addrs: HashMap<String, String>,
    ) -> Result<()> {
        let meta = serde_json::json!({
            "epoch": f.epoch,
            "generation": f.generation,
            "actors": f.acked,
            "bytes": f.bytes,
            // What retention must keep while this checkpoint is kept.
            "shared": f.shared,
            "trigger": f.trigger,
            "started_at_ms": f.started_ms,
            "completed_at_ms": adclick_runtime::now_ms(),
        });
        // The metadata file is written last: only now does checkpoint e exist.
        self.store
            .put_metadata(f.epoch, serde_json::to_vec(&meta)?)
            .instrument(tracing::info_span!(parent: &f.span, "write_metadata", epoch = f.epoch))
            .await?;
        f.span.record("outcome", "complete");
        let took = f.started.elapsed();
        metrics::histogram!("checkpoint_duration_ms").record(took.as_millis() as f64);
        metrics::gauge!("checkpoint_size_bytes").set(f.bytes as f64);
        metrics::gauge!("last_completed_checkpoint").set(f.epoch as f64);
        tracing::info!(
            epoch = f.epoch,
            ms = took.as_millis() as u64,
            bytes = f.bytes,
            "checkpoint complete"
        );
        let savepoints = {
            let mut s = state.lock().await;
            s.last_complete = Some((f.epoch, Instant::now()));
            s.checkpoint_completed(f.generation);
            s.history
                .finish(f.epoch, Outcome::Completed, took.as_millis() as u64, "");
            if crate::savepoints::is_savepoint_trigger(f.trigger) {
                let aggregates = s.aggregates_deployed();
                s.savepoints.push(crate::savepoints::Savepoint {
                    id: crate::savepoints::id_of(f.epoch),
                    epoch: f.epoch,
                    created_ms: adclick_runtime::now_ms(),
                    trigger: f.trigger.to_owned(),
                    bytes: f.bytes,
                    aggregates,
                });
                tracing::info!(epoch = f.epoch, trigger = f.trigger, "savepoint complete");
                Some(s.savepoints.clone())
            } else {
                None
            }
        };
        if let Some(list) = savepoints {
            crate::savepoints::save(&self.store, &list).await?;
        }
        let targets: Vec<String> = nodes.iter().filter_map(|n| addrs.get(n).cloned()).collect();
        let commit = tracing::info_span!(parent: &f.span, "complete_checkpoint", epoch = f.epoch);
        let tp = adclick_runtime::telemetry::traceparent(&commit);
        broadcast(&targets, f.generation, f.epoch, Broadcast::Complete, &tp)
            .instrument(commit)
            .await;
        state.lock().await.commit_sent = f.epoch;
        let (all, complete) = self.store.epochs().await?;
        let keep: BTreeSet<u64> = state
            .lock()
            .await
            .savepoints
            .iter()
            .map(|s| s.epoch)
            .collect();
        // Savepoints are not checkpoints retention counts or deletes.
        let complete: BTreeSet<u64> = complete.difference(&keep).copied().collect();
        for e in checkpoints_to_delete(&complete, &all, self.cfg.checkpoint.retain) {
            if Some(&e) != all.last() && !keep.contains(&e) {
                self.store.delete_epoch(e).await?;
            }
        }
        sweep_shared(&self.store).await
    }
}

/// Deletes the shared snapshot objects no kept checkpoint references
/// (`adclick_core::checkpoint::shared::to_delete`). A checkpoint whose
/// metadata cannot be read protects nothing but is not restorable either.
pub async fn sweep_shared(store: &SnapshotStore) -> Result<()> {
    let (_, complete) = store.epochs().await?;
    let Some(newest) = complete.last().copied() else {
        return Ok(());
    };
    let mut referenced = BTreeSet::new();
    for e in &complete {
        match store.shared_refs(*e).await {
            Ok(refs) => referenced.extend(refs),
            Err(err) => {
                tracing::warn!(epoch = e, "reading what checkpoint {e} references: {err:#}")
            }
        }
    }
    let objects = store.shared_objects().await?;
    let gone = shared::to_delete(&objects, &referenced, newest);
    for name in &gone {
        store.delete_shared(name).await?;
    }
    if !gone.is_empty() {
        metrics::counter!("snapshot_shared_objects_deleted_total").increment(gone.len() as u64);
        tracing::debug!(
            deleted = gone.len(),
            kept = objects.len() - gone.len(),
            "swept shared snapshot objects"
        );
    }
    Ok(())
}

/// Which checkpoint RPC [`broadcast`] sends.
#[derive(Clone, Copy, Debug)]
enum Broadcast {
    /// InjectBarrier; `drain` for `adclickctl stop --drain`.
    Barrier { drain: bool },
    /// CompleteCheckpoint.
    Complete,
}

/// Sends InjectBarrier (or CompleteCheckpoint) to every node; a node that
/// does not answer makes the checkpoint time out (or commits later).
async fn broadcast(
    targets: &[String],
    generation: u64,
    epoch: u64,
    what: Broadcast,
    traceparent: &str,
) {
    let calls = targets.iter().map(|addr| async move {
        let mut c = crate::registry::node_client(addr).await?;
        let mut req = CheckpointRequest {
            generation,
            epoch,
            traceparent: traceparent.to_string(),
            drain: false,
        };
        match what {
            Broadcast::Barrier { drain } => {
                req.drain = drain;
                c.inject_barrier(req).await?;
            }
            Broadcast::Complete => {
                c.complete_checkpoint(req).await?;
            }
        }
        anyhow::Ok(())
    });
    for r in futures::future::join_all(calls).await {
        if let Err(e) = r {
            tracing::warn!(epoch, ?what, "checkpoint RPC failed: {e:#}");
        }
    }
}

/// Ends checkpoint `epoch` as aborted with `reason` (in `adclickctl
/// checkpoints` and `failed_checkpoints`), when a coordinator step of it
/// failed; `checkpoint_failures_total` is counted by the caller.
async fn fail_checkpoint(state: &Arc<Mutex<ClusterState>>, epoch: u64, reason: &str) {
    let mut s = state.lock().await;
    if s.inflight.as_ref().is_some_and(|f| f.epoch == epoch) {
        s.abort_inflight(reason);
    } else {
        s.history.finish(epoch, Outcome::Aborted, 0, reason);
    }
    s.failed_checkpoints += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart with another `job.key_groups` is refused, naming both.
    #[tokio::test]
    async fn a_restart_with_other_key_groups_is_refused() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("adclick-kg-{}", std::process::id()));
        let mut cfg = Config::default();
        cfg.checkpoint.store = dir.display().to_string();
        let first = Checkpointer::new(cfg.clone())?;
        let state = Arc::new(Mutex::new(ClusterState::default()));
        first.load(&state).await?;
        first.persist(1, 5).await?;
        // The same value: carries on from the stored generation and epoch.
        let again = Checkpointer::new(cfg.clone())?;
        let state = Arc::new(Mutex::new(ClusterState::default()));
        again.load(&state).await?;
        assert_eq!(state.lock().await.next_epoch, 5);
        cfg.job.key_groups = 8192;
        let changed = Checkpointer::new(cfg)?;
        let err = changed
            .load(&Arc::new(Mutex::new(ClusterState::default())))
            .await
            .expect_err("a changed key_groups must be refused");
        let msg = format!("{err:#}");
        assert!(msg.contains("8192") && msg.contains("4096"), "{msg}");
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}
