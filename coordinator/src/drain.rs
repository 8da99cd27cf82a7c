//! Draining a node that is going away, as Kubernetes does with SIGTERM: the
//! node asks before it exits, the coordinator takes a checkpoint so the
//! moved actors replay as little as possible, marks the node draining (so no
//! plan places actors on it) and waits until the job runs on the others.
//!
//! Exactness never depends on the drain finishing: actors that stop without
//! it restart from the last complete checkpoint like after any crash. The
//! drain only makes a planned restart quick and quiet.

use crate::registry::{ClusterState, JobState};
use adclick_proto::cluster::DrainResponse;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tonic::Status;

const POLL: Duration = Duration::from_millis(50);

/// What a drain is waiting for, decided from the cluster state alone.
#[derive(Debug, PartialEq, Eq)]
pub enum DrainProgress {
    /// Actors are still placed on the node and other nodes can take them.
    Moving,
    /// No actor of the job is on the node any more.
    Moved,
    /// Nowhere to move to: the node is the last live one.
    NoOtherNode,
}

/// Where the drain of `node` stands.
pub fn progress(s: &ClusterState, node: &str, heartbeat_timeout_ms: u64) -> DrainProgress {
    let hosts = s.placements.iter().any(|p| p.node_id == node);
    let settled = matches!(s.job_state, JobState::Running | JobState::Degraded);
    if !hosts && settled {
        DrainProgress::Moved
    } else if s.alive(heartbeat_timeout_ms).is_empty() {
        DrainProgress::NoOtherNode
    } else {
        DrainProgress::Moving
    }
}

fn last_complete(s: &ClusterState) -> u64 {
    s.last_complete.map_or(0, |(e, _)| e)
}

/// How a drained node is kept free of actors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// It is going away (SIGTERM): until it registers again.
    Draining,
    /// An operator cordoned it (`adclickctl drain`): until `uncordon`.
    Cordon,
}

/// Drains `node` within `timeout`. `checkpoints` is false when the job runs
/// without checkpoints (at-least-once), so there is none to wait for.
pub async fn drain(
    state: &Arc<Mutex<ClusterState>>,
    node: &str,
    mark: Mark,
    timeout: Duration,
    heartbeat_timeout_ms: u64,
    checkpoints: bool,
) -> Result<DrainResponse, Status> {
    let deadline = Instant::now() + timeout;
    let (hosts, before) = {
        let mut s = state.lock().await;
        if !s.nodes.contains_key(node) {
            return Err(Status::not_found(format!("node {node} is not registered")));
        }
        let hosts = s.placements.iter().any(|p| p.node_id == node);
        if hosts && checkpoints {
            s.request_checkpoint("drain");
        }
        (hosts, last_complete(&s))
    };
    tracing::info!(node, hosts, "drain requested");
    let mut checkpoint = before;
    if hosts && checkpoints {
        // At most half of the time for the checkpoint; the rest is for the move.
        let until = Instant::now() + timeout / 2;
        while Instant::now() < until {
            checkpoint = last_complete(&*state.lock().await);
            if checkpoint > before {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        if checkpoint == before {
            tracing::warn!(node, "no checkpoint completed for the drain; moving anyway");
        }
    }
    {
        let mut s = state.lock().await;
        match mark {
            Mark::Draining => {
                if let Some(n) = s.nodes.get_mut(node) {
                    n.draining = true;
                }
            }
            Mark::Cordon => {
                s.cordoned.insert(node.to_owned());
            }
        }
    }
    loop {
        let (progress, generation, checkpoint) = {
            let s = state.lock().await;
            (
                progress(&s, node, heartbeat_timeout_ms),
                s.generation,
                last_complete(&s),
            )
        };
        let message = match progress {
            DrainProgress::Moved => format!("actors moved away; generation {generation} runs without {node}"),
            DrainProgress::NoOtherNode => format!(
                "no other live node can take the actors; they stop with {node} and restart from checkpoint {checkpoint}"
            ),
            DrainProgress::Moving if Instant::now() >= deadline => format!(
                "actors not moved within {timeout:?}; they restart from checkpoint {checkpoint}"
            ),
            DrainProgress::Moving => {
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        tracing::info!(node, generation, checkpoint, %message, "drain finished");
        return Ok(DrainResponse {
            moved: progress == DrainProgress::Moved,
            checkpoint,
            generation,
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NodeInfo;
    use adclick_proto::cluster::Placement;

    fn node(draining: bool) -> NodeInfo {
        NodeInfo {
            addr: "x".into(),
            last_seen: Instant::now(),
            generation: 1,
            actors: Vec::new(),
            draining,
        }
    }

    fn placed(on: &str) -> Placement {
        Placement {
            actor_id: "map-0".into(),
            node_id: on.into(),
            addr: "x".into(),
        }
    }

    #[test]
    fn a_drain_is_done_only_when_the_job_runs_elsewhere() {
        let mut s = ClusterState::default();
        s.nodes.insert("a".into(), node(true));
        s.nodes.insert("b".into(), node(false));
        s.placements = vec![placed("a"), placed("b")];
        s.job_state = JobState::Running;
        assert_eq!(progress(&s, "a", 5_000), DrainProgress::Moving);
        // Redeploying: placements already changed, but not yet running.
        s.placements = vec![placed("b")];
        s.job_state = JobState::Recovering;
        assert_eq!(progress(&s, "a", 5_000), DrainProgress::Moving);
        s.job_state = JobState::Running;
        assert_eq!(progress(&s, "a", 5_000), DrainProgress::Moved);
    }

    #[test]
    fn the_last_node_cannot_be_drained_and_says_so() {
        let mut s = ClusterState::default();
        s.nodes.insert("a".into(), node(true));
        s.placements = vec![placed("a")];
        s.job_state = JobState::Running;
        assert_eq!(progress(&s, "a", 5_000), DrainProgress::NoOtherNode);
        // Draining nodes are never candidates for placement.
        assert!(s.alive(5_000).is_empty());
    }
}
