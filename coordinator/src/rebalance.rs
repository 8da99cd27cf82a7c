//! Spreading the job over the nodes it has now (`adclickctl rebalance`,
//! `cluster.rebalance_on_join`). A node that joins a running cluster (a
//! StatefulSet scaled up, or a node back from a restart after its actors
//! moved away) hosts nothing until the job is redeployed over every live
//! node. The redeploy follows a checkpoint taken for it, so the new
//! generation replays almost nothing; output stays exact either way, as in
//! any recovery.

use crate::registry::ClusterState;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A rebalance waiting for its checkpoint.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Who asked: `adclickctl rebalance` or `node X joined`.
    pub reason: String,
    /// The checkpoint that must complete first (0: none, deploy at once).
    pub after_epoch: u64,
    /// When it was asked for; after `patience` it goes ahead without the
    /// checkpoint (restoring the last complete one is exact too).
    pub since: Instant,
}

/// Asks for a rebalance: a checkpoint first when the job takes them.
/// Returns the epoch it waits for (0: none).
pub fn request(s: &mut ClusterState, reason: String, checkpoints: bool) -> u64 {
    let after_epoch = if checkpoints {
        let epoch = s.inflight.as_ref().map_or(s.next_epoch, |f| f.epoch + 1);
        s.request_checkpoint("rebalance");
        epoch
    } else {
        0
    };
    tracing::info!(%reason, after_epoch, "rebalance requested");
    s.rebalance = Some(Pending {
        reason,
        after_epoch,
        since: Instant::now(),
    });
    after_epoch
}

/// `cluster.rebalance_on_join`: a node that hosts nothing, once the current
/// deployment settled, starts a rebalance.
pub fn on_join(
    s: &mut ClusterState,
    heartbeat_timeout_ms: u64,
    checkpoints: bool,
    settle: Duration,
) {
    let settled = s.deployed_at.is_some_and(|t| t.elapsed() >= settle);
    if s.rebalance.is_some() || s.placements.is_empty() || !settled {
        return;
    }
    let idle = idle_nodes(s, heartbeat_timeout_ms);
    if !idle.is_empty() {
        request(
            s,
            format!("node(s) {} joined", idle.join(", ")),
            checkpoints,
        );
    }
}

/// Live, schedulable nodes that host no actor of the current placement.
pub fn idle_nodes(s: &ClusterState, heartbeat_timeout_ms: u64) -> Vec<String> {
    let used: BTreeSet<&str> = s.placements.iter().map(|p| p.node_id.as_str()).collect();
    s.alive(heartbeat_timeout_ms)
        .into_iter()
        .filter(|n| !used.contains(n.as_str()))
        .collect()
}

/// Whether a pending rebalance should deploy now: its checkpoint completed,
/// or it waited `patience` (a checkpoint that keeps failing must not block
/// it forever).
pub fn due(p: &Pending, last_complete: Option<u64>, patience: Duration) -> bool {
    p.after_epoch == 0
        || last_complete.is_some_and(|e| e >= p.after_epoch)
        || p.since.elapsed() >= patience
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NodeInfo;
    use adclick_proto::cluster::Placement;

    fn node() -> NodeInfo {
        NodeInfo {
            addr: "a".into(),
            last_seen: Instant::now(),
            generation: 1,
            actors: Vec::new(),
            draining: false,
        }
    }

    #[test]
    fn joined_nodes_are_idle_until_placed() {
        let mut s = ClusterState::default();
        for n in ["node-0", "node-1", "node-2"] {
            s.nodes.insert(n.into(), node());
        }
        s.placements = vec![Placement {
            actor_id: "map-0".into(),
            node_id: "node-0".into(),
            addr: "a".into(),
        }];
        if let Some(n) = s.nodes.get_mut("node-2") {
            n.draining = true;
        }
        assert_eq!(idle_nodes(&s, 5_000), vec!["node-1".to_string()]);
    }

    #[test]
    fn a_rebalance_waits_for_its_checkpoint_but_not_forever() {
        let p = Pending {
            reason: "test".into(),
            after_epoch: 7,
            since: Instant::now(),
        };
        let long = Duration::from_secs(600);
        assert!(!due(&p, Some(6), long));
        assert!(due(&p, Some(7), long));
        assert!(due(&p, None, Duration::ZERO));
        assert!(due(
            &Pending {
                after_epoch: 0,
                ..p
            },
            None,
            long
        ));
    }
}
