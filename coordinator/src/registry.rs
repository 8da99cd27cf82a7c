//! What the coordinator knows about the cluster: nodes, their liveness,
//! the current generation and placement.

use adclick_proto::cluster::{ActorState, Placement};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// One registered node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// gRPC address.
    pub addr: String,
    /// Last heartbeat (or registration).
    pub last_seen: Instant,
    /// Generation the node reported running.
    pub generation: u64,
    /// Actor states from its last heartbeat.
    pub actors: Vec<ActorState>,
    /// The node is shutting down (it asked to be drained): no actor is
    /// placed on it until it registers again.
    pub draining: bool,
}

pub use crate::states::JobState;

/// A checkpoint that was triggered and is collecting acks.
#[derive(Clone, Debug)]
pub struct Inflight {
    /// Its epoch.
    pub epoch: u64,
    /// Generation it belongs to.
    pub generation: u64,
    /// When it was triggered.
    pub started: Instant,
    /// Actors that acked.
    pub acked: BTreeSet<String>,
    /// Total snapshot bytes.
    pub bytes: u64,
    /// Shared snapshot objects the acked snapshots reference.
    pub shared: BTreeSet<String>,
    /// Why it was taken (see `history::CheckpointRecord::trigger`).
    pub trigger: &'static str,
    /// Wall clock at the trigger, epoch ms.
    pub started_ms: i64,
    /// The checkpoint's root span: open until it completes or is aborted;
    /// every actor's snapshot and every sink's commit is its child.
    pub span: tracing::Span,
}

/// Mutable cluster state, behind one lock.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Registered nodes by id.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Current generation (0 before the first deploy).
    pub generation: u64,
    /// Job lifecycle state.
    pub job_state: JobState,
    /// Placement of the current generation.
    pub placements: Vec<Placement>,
    /// When the current generation was deployed.
    pub deployed_at: Option<Instant>,
    /// Epoch the next checkpoint gets; epochs grow across generations and
    /// coordinator restarts, so a newer epoch always means newer output.
    pub next_epoch: u64,
    /// The checkpoint collecting acks, if any.
    pub inflight: Option<Inflight>,
    /// Last complete checkpoint and when it completed.
    pub last_complete: Option<(u64, Instant)>,
    /// When the last checkpoint was triggered.
    pub last_trigger: Option<Instant>,
    /// An operator asked for a checkpoint now.
    pub trigger_requested: bool,
    /// Who asked (`manual`, `drain`, `shutdown`), for the history.
    pub trigger_kind: &'static str,
    /// Recent checkpoints (`adclickctl checkpoints`).
    pub history: crate::history::History,
    /// A rebalance waiting for its checkpoint.
    pub rebalance: Option<crate::rebalance::Pending>,
    /// Since when the job is in `job_state` (monotonic, wall clock ms).
    pub state_since: Option<(Instant, i64)>,
    /// Why it entered `job_state`.
    pub state_reason: String,
    /// The Aggregates to run: `aggregate.replicas`, or the operator's last
    /// `adclickctl scale` (`crate::scale::effective_replicas`).
    pub aggregates_configured: u32,
    /// A rescale in progress.
    pub rescale: Option<crate::scale::Rescale>,
    /// The input topic's partition count as last looked up
    /// (`crate::partitions`).
    pub input_partitions: Option<i32>,
    /// The partitions the current generation reads.
    pub deployed_partitions: i32,
    /// Savepoints, oldest first.
    pub savepoints: Vec<crate::savepoints::Savepoint>,
    /// A stop waiting for its savepoint.
    pub stop: Option<crate::stop::Pending>,
    /// The job is stopped, with this savepoint.
    pub stopped: Option<crate::savepoints::Stopped>,
    /// Checkpoints of the history a restored savepoint abandoned.
    pub superseded: Option<crate::savepoints::Superseded>,
    /// The checkpoint the current generation restored from, until that
    /// generation completes a checkpoint of its own: restored Aggregates
    /// reference its shared objects, so it must not be deleted before.
    pub restored_from: Option<u64>,
    /// The last failed deployment, while retrying.
    pub deploy_failure: Option<crate::retry::DeployFailure>,
    /// Nodes an operator cordoned (`adclickctl drain`): they get no actors,
    /// also after they register again, until `adclickctl uncordon`.
    pub cordoned: BTreeSet<String>,
    /// Checkpoints aborted (timeout or failure).
    pub failed_checkpoints: u64,
    /// Newest checkpoint whose commit was sent to the sinks.
    pub commit_sent: u64,
    /// How the sinks commit ("transactional" or "replay"); empty until
    /// `checkpoint.kafka_transactions = "auto"` has the broker's answer.
    pub sink_mode: &'static str,
}

impl ClusterState {
    /// Aggregates of the current placement.
    pub fn aggregates_deployed(&self) -> u32 {
        self.placements
            .iter()
            .filter(|p| p.actor_id.starts_with("aggregate-"))
            .count() as u32
    }

    /// The live job's event time, the minimum watermark over the current
    /// generation's Aggregates: windows before it are closed. `None` until
    /// every placed Aggregate has reported one, since a silent Aggregate may
    /// still hold an open window.
    pub fn aggregates_watermark(&self) -> Option<i64> {
        let reported: Vec<Option<i64>> = self
            .nodes
            .values()
            .flat_map(|n| n.actors.iter())
            .filter(|a| a.generation == self.generation && a.actor_id.starts_with("aggregate-"))
            .map(|a| a.watermark)
            .collect();
        if reported.is_empty() || reported.len() < self.aggregates_deployed() as usize {
            return None;
        }
        reported
            .into_iter()
            .try_fold(i64::MAX, |m, w| w.map(|w| m.min(w)))
    }

    /// Every actor of the current placement reported `running` in the
    /// current generation (so a barrier reaches every one of them).
    pub fn all_actors_running(&self) -> bool {
        !self.placements.is_empty()
            && self.placements.iter().all(|p| {
                self.nodes.get(&p.node_id).is_some_and(|n| {
                    n.actors.iter().any(|a| {
                        a.actor_id == p.actor_id
                            && a.generation == self.generation
                            && a.state == "running"
                    })
                })
            })
    }

    /// Nodes that heartbeated within `timeout_ms`, schedulable or not.
    pub fn registered(&self, timeout_ms: u64) -> usize {
        self.nodes
            .values()
            .filter(|n| n.last_seen.elapsed().as_millis() < u128::from(timeout_ms))
            .count()
    }

    /// Ids of nodes that heartbeated within `timeout_ms` and may host
    /// actors (not draining, not cordoned), sorted.
    pub fn alive(&self, timeout_ms: u64) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(id, n)| {
                !n.draining
                    && !self.cordoned.contains(*id)
                    && n.last_seen.elapsed().as_millis() < u128::from(timeout_ms)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// A client for a node's control API with bounded connect and request
/// times, so a paused (SIGSTOP) node cannot stall the coordinator.
pub async fn node_client(
    addr: &str,
) -> anyhow::Result<adclick_proto::cluster::node_client::NodeClient<tonic::transport::Channel>> {
    let channel = adclick_runtime::grpc::endpoint(addr)?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?;
    Ok(adclick_proto::cluster::node_client::NodeClient::new(
        channel,
    ))
}

impl ClusterState {
    /// Drops the checkpoint in flight (a redeploy), recording why.
    pub fn abort_inflight(&mut self, reason: &str) {
        if let Some(f) = self.inflight.take() {
            let ms = f.started.elapsed().as_millis() as u64;
            self.history
                .finish(f.epoch, crate::history::Outcome::Aborted, ms, reason);
        }
    }

    /// Applies `event` to the job's state (`crate::states`), saying why.
    /// An illegal transition is refused: logged, counted in
    /// `illegal_state_transitions_total`, and the state stays.
    pub fn transition(&mut self, event: crate::states::Event, reason: impl Into<String>) -> bool {
        match crate::states::next(self.job_state, event) {
            Some(to) => {
                self.set_state(to, reason);
                true
            }
            None => {
                let reason = reason.into();
                tracing::warn!(
                    from = self.job_state.as_str(),
                    ?event,
                    %reason,
                    "illegal job state transition refused"
                );
                metrics::counter!("illegal_state_transitions_total").increment(1);
                false
            }
        }
    }

    /// Puts the job in `state`, saying why; "since" changes only when the
    /// state does. Only for the initial state and tests: the coordinator
    /// moves between states with [`ClusterState::transition`].
    pub fn set_state(&mut self, state: JobState, reason: impl Into<String>) {
        if self.job_state != state || self.state_since.is_none() {
            self.job_state = state;
            self.state_since = Some((Instant::now(), adclick_runtime::now_ms()));
            self.state_reason = reason.into();
            tracing::info!(state = state.as_str(), reason = %self.state_reason, "job state");
        }
    }

    /// Records that a checkpoint of `generation` completed: once the
    /// current generation has one of its own, the checkpoint it restored
    /// from is no longer needed for the objects its Aggregates reference.
    pub fn checkpoint_completed(&mut self, generation: u64) {
        if generation == self.generation {
            self.restored_from = None;
        }
    }

    /// Asks for a checkpoint now, saying who asked.
    pub fn request_checkpoint(&mut self, kind: &'static str) {
        self.trigger_requested = true;
        self.trigger_kind = kind;
    }
}
