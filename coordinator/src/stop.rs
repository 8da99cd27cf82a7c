//! Stopping the job with a savepoint (`adclickctl stop [--drain]`).
//!
//! The stop asks for a checkpoint with the trigger `stop`; once it is
//! complete and its commit was sent to the sinks, every node cancels the
//! generation and the job is `stopped`: the coordinator stays up, deploys
//! nothing (also after a restart) until `adclickctl restore`. With
//! `--drain`, the checkpoint's barrier first moves event time to the end in
//! every Map, so every open window is emitted and committed with it.

use crate::registry::{ClusterState, JobState};
use crate::savepoints::{id_of, Stopped, STOPPED};
use crate::states::Event;
use adclick_runtime::snapshots::SnapshotStore;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A stop waiting for its savepoint.
#[derive(Clone, Debug)]
pub struct Pending {
    /// `--drain`.
    pub drain: bool,
    /// The checkpoint that becomes the savepoint.
    pub epoch: u64,
    /// When it was asked for.
    pub since: Instant,
}

/// The checkpoint trigger of a stop.
pub fn trigger(drain: bool) -> &'static str {
    if drain {
        "stop --drain"
    } else {
        "stop"
    }
}

/// Asks to stop; refused (with the reason) unless the job runs and nothing
/// else changes it. Returns the epoch of the savepoint-to-be.
pub fn request(s: &mut ClusterState, drain: bool, checkpoints: bool) -> Result<u64, String> {
    if !checkpoints {
        return Err(
            "stop needs checkpoints (checkpoint.exactly_once = true) to take its savepoint".into(),
        );
    }
    if let Some(p) = &s.rebalance {
        return Err(format!(
            "a redeployment is pending ({}); stop the job once it runs",
            p.reason
        ));
    }
    if !matches!(s.job_state, JobState::Running | JobState::Degraded) || s.placements.is_empty() {
        return Err(format!(
            "the job is {} ({}); only a running job can be stopped",
            s.job_state.as_str(),
            s.state_reason
        ));
    }
    let epoch = s.inflight.as_ref().map_or(s.next_epoch, |f| f.epoch + 1);
    s.request_checkpoint(trigger(drain));
    s.stop = Some(Pending {
        drain,
        epoch,
        since: Instant::now(),
    });
    s.transition(
        Event::StopRequested,
        format!("{}: savepoint {} first", trigger(drain), id_of(epoch)),
    );
    Ok(epoch)
}

/// What a pending stop needs now.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Its savepoint is not complete yet.
    Wait,
    /// The savepoint is complete and committed: cancel `generation` on
    /// these nodes.
    Cancel {
        /// The generation to cancel.
        generation: u64,
        /// Node addresses.
        addrs: Vec<String>,
    },
    /// The savepoint failed: the job keeps running.
    Failed(String),
}

/// Decides the next step of a pending stop (pure).
pub fn next(s: &ClusterState, patience: Duration) -> Step {
    let Some(p) = &s.stop else {
        return Step::Wait;
    };
    if s.commit_sent >= p.epoch && s.savepoints.iter().any(|sp| sp.epoch >= p.epoch) {
        let nodes: BTreeSet<&str> = s.placements.iter().map(|p| p.node_id.as_str()).collect();
        let addrs = nodes
            .iter()
            .filter_map(|n| s.nodes.get(*n).map(|i| i.addr.clone()))
            .collect();
        return Step::Cancel {
            generation: s.generation,
            addrs,
        };
    }
    if let Some(r) = s.history.get(p.epoch) {
        if r.outcome == crate::history::Outcome::Aborted {
            return Step::Failed(format!(
                "savepoint {} was aborted: {}",
                id_of(p.epoch),
                r.reason
            ));
        }
    }
    if p.since.elapsed() > patience {
        return Step::Failed(format!("no savepoint within {} s", patience.as_secs()));
    }
    Step::Wait
}

/// Drives a pending stop one step (called by the job loop).
pub async fn drive(
    state: &tokio::sync::Mutex<ClusterState>,
    store: &SnapshotStore,
    patience: Duration,
) {
    let step = next(&*state.lock().await, patience);
    match step {
        Step::Wait => {}
        Step::Failed(why) => {
            let mut s = state.lock().await;
            tracing::warn!("stop failed: {why}");
            s.stop = None;
            s.transition(Event::StopFailed, format!("stop failed: {why}"));
        }
        Step::Cancel { generation, addrs } => {
            for addr in &addrs {
                let cancelled = async {
                    let mut c = crate::registry::node_client(addr).await?;
                    c.cancel(adclick_proto::cluster::CancelRequest { generation })
                        .await?;
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = cancelled {
                    // A node that does not answer is cancelled by the next
                    // deployment's newer generation anyway.
                    tracing::warn!(%addr, "cancelling generation {generation}: {e:#}");
                }
            }
            let stopped = {
                let mut s = state.lock().await;
                let Some(p) = s.stop.take() else { return };
                let stopped = Stopped {
                    savepoint: id_of(p.epoch),
                    drained: p.drain,
                };
                s.placements.clear();
                s.deployed_at = None;
                s.stopped = Some(stopped.clone());
                s.transition(
                    Event::StopCompleted,
                    format!("stopped with savepoint {}", stopped.savepoint),
                );
                stopped
            };
            if let Err(e) = save_stopped(store, Some(&stopped)).await {
                tracing::error!("storing the stopped marker: {e:#}");
            }
        }
    }
}

/// Stores (or clears) the stopped marker, so a restarted coordinator keeps
/// a stopped job stopped.
pub async fn save_stopped(store: &SnapshotStore, stopped: Option<&Stopped>) -> anyhow::Result<()> {
    store
        .put_coordinator_object(STOPPED, serde_json::to_vec(&stopped)?)
        .await
}

/// Reads the stopped marker.
pub async fn load_stopped(store: &SnapshotStore) -> anyhow::Result<Option<Stopped>> {
    match store.coordinator_object(STOPPED).await? {
        Some(b) => Ok(serde_json::from_slice(&b)?),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{CheckpointRecord, Outcome};
    use crate::savepoints::Savepoint;
    use adclick_proto::cluster::Placement;

    fn running() -> ClusterState {
        let mut s = ClusterState::default();
        s.set_state(JobState::Running, "test");
        s.next_epoch = 7;
        s.placements = vec![Placement {
            actor_id: "map-0".into(),
            node_id: "node-0".into(),
            addr: "a".into(),
        }];
        s
    }

    #[test]
    fn a_stop_waits_for_its_committed_savepoint_then_cancels() {
        let mut s = running();
        assert_eq!(request(&mut s, true, true), Ok(7));
        assert_eq!(s.job_state, JobState::Stopping);
        assert_eq!(s.trigger_kind, "stop --drain");
        let long = Duration::from_secs(600);
        assert_eq!(next(&s, long), Step::Wait);
        s.savepoints.push(Savepoint {
            id: "sp-7".into(),
            epoch: 7,
            created_ms: 0,
            trigger: "stop --drain".into(),
            bytes: 0,
            aggregates: 1,
        });
        assert_eq!(next(&s, long), Step::Wait, "not committed yet");
        s.commit_sent = 7;
        assert!(matches!(next(&s, long), Step::Cancel { .. }));
        // Refused while stopping, and without checkpoints.
        assert!(request(&mut s, false, true).is_err_and(|m| m.contains("stopping")));
        assert!(request(&mut running(), false, false).is_err_and(|m| m.contains("exactly_once")));
    }

    #[test]
    fn an_aborted_or_late_savepoint_fails_the_stop() {
        let mut s = running();
        request(&mut s, false, true).ok();
        s.history.started(CheckpointRecord {
            epoch: 7,
            generation: 1,
            trigger: "stop",
            started_ms: 0,
            duration_ms: None,
            alignment_ms: 0,
            bytes: 0,
            acked: 0,
            expected: 1,
            outcome: Outcome::InProgress,
            reason: String::new(),
            alignments: Default::default(),
        });
        s.history.finish(7, Outcome::Aborted, 5, "timed out");
        assert!(
            matches!(next(&s, Duration::from_secs(600)), Step::Failed(m) if m.contains("timed out"))
        );
        let mut s = running();
        request(&mut s, false, true).ok();
        assert!(matches!(next(&s, Duration::ZERO), Step::Failed(m) if m.contains("no savepoint")));
    }
}
